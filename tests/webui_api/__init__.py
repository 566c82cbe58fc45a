"""Tests that drive a live AUTOMATIC1111 WebUI with AnimateDiff and I4VGen over its HTTP API (env I4VGEN_WEBUI_URL)."""
