"""Tests of how operators run telemeter: image, Compose, Helm chart, ring status page."""
