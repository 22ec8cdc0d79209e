"""OpenAI Realtime's wire: the calls REST client, the sideband WebSocket client, typed server events."""
