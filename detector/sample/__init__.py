"""The flow sample: which packets and bytes of a connection, framed and masked the same way
for captures and for Zeek (spec), the frame parser (frame), header fields (fields), tunnels.

Imported as semiflow.detector.sample: pyproject.toml maps semiflow.detector to this repository's
detector/ folder, which tools that read imports cannot follow.
"""
