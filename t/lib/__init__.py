"""Test helpers for ngx_stream_xmpp_cm (raw XMPP client, slixmpp wrappers,
nginx runner)."""
