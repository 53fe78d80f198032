"""Bridge: the telephony edge (WebRTC / SIP-RTP legs, call control) feeding agent sessions."""
