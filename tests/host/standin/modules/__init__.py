"""Stand-in of AUTOMATIC1111 WebUI 1.10.1's ``modules`` package (tests only)."""
