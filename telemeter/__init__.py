"""The code shared by the server (app/) and the client (client/): wire formats, selectors,
transforms and the compiled passes (docs/architecture.md, "Layout")."""

__version__ = "0.1.0"
