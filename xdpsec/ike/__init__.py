"""IKEv2 (RFC 7296): sans-IO core, wire format, tasks. See docs/IKE.md."""
