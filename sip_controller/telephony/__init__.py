"""Twilio's wire: request signatures, the TwiML we answer with, the callbacks Twilio sends, and the Calls API.

Like ``realtime/`` for OpenAI, it knows Twilio and nothing about calls; the routes that use it are in
``service/twilio_routes.py``. The official ``twilio`` package is used for what must match Twilio exactly (the
signature algorithm, TwiML), never for HTTP: the Calls API goes through the controller's one httpx client.
"""
