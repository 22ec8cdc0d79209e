"""``X-Twilio-Signature``: Twilio signs each webhook with the account's auth token (HMAC-SHA1 of the full URL and,
for a form POST, the sorted parameters). Checked with the official package's ``RequestValidator`` against the
public URL the operator configured (``SIPCTL_PUBLIC_URL`` + path), never against the URL the app sees behind a
proxy or load balancer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "x-twilio-signature"

#: form parameters as Twilio sent them: a mapping of names to values, or (name, value) pairs (repeats kept)
Params = Mapping[str, str] | Sequence[tuple[str, str]]


class _Pairs:
    """(name, value) pairs with the ``getlist`` the validator looks for (repeated names keep every value)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def __iter__(self) -> Iterator[str]:
        return iter({name for name, _ in self._pairs})

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]


def _params(params: Params) -> dict[str, str] | _Pairs:
    if isinstance(params, Mapping):
        return dict(params)
    return _Pairs(params)


class TwilioSignatures:
    """Checks (and, for the simulator and tests, makes) Twilio's request signatures for one account."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self.public_url = public_url.rstrip("/")

    def url(self, path_and_query: str) -> str:
        """The URL Twilio was given for ``path_and_query`` (``/twilio/status?leg=…``)."""
        return self.public_url + path_and_query

    def valid(self, path_and_query: str, params: Params, signature: str | None) -> bool:
        """True when ``signature`` is Twilio's for this public URL and these form parameters."""
        if not signature:
            return False
        return bool(self._validator.validate(self.url(path_and_query), _params(params), signature))

    def sign(self, url: str, params: Params) -> str:
        """The ``X-Twilio-Signature`` Twilio would send for a POST of ``params`` to ``url``."""
        return str(self._validator.compute_signature(url, _params(params)))
