"""The Twilio stand-in's TwiML reader: the verbs the controller emits, parsed defensively.

TwiML comes from the network (the controller's answer to a voice webhook, a ``Twiml`` form field), so it is
untrusted: a document over 64 KiB is refused (Twilio's 11750), as is any DTD (``<!DOCTYPE``, ``<!ENTITY``: no
entity expansion, internal or external), nesting deeper than :data:`MAX_DEPTH` and more than
:data:`MAX_ELEMENTS` elements. A first pass with expat (the parser under :mod:`xml.etree`) checks those limits
with handlers that stop at the first DTD token; only a document that passed is built into a tree.

Understood: ``<Say>``, ``<Pause>``, ``<Hangup>``, ``<Reject>``, ``<Redirect>``, ``<Dial>`` with one
``<Sip>`` or ``<Number>`` noun, and ``<Gather>`` (with nested ``<Say>``, ``<Play>``, ``<Pause>``). Anything else
is a schema error (Twilio's 12200), which ends the call as Twilio does (it plays its "application error"
message and hangs up); the stand-in records it as a problem.

``<Gather>``'s attributes are read as Twilio reads them: a value it would not take is a warning with Twilio's
code and the default is used instead (13313 ``timeout``, 13327 ``speechTimeout``, 13335 ``speechTimeout="auto"``
with ``speechModel="default"``, 13334 ``speechModel``, 13338 ``actionOnEmptyResult``, 13310 ``finishOnKey``,
13314 ``numDigits``, 13330 ``hints``, 13320 a nested verb other than ``<Say>``, ``<Play>``, ``<Pause>``: ignored);
an ``input`` other than ``dtmf``, ``speech`` or both, or a bad ``method``, is a schema error (12200).

``<Sip>`` URIs carry SIP headers in their query (``sip:proj@sip.api.openai.com;transport=tls?X-Ref=abc``).
As Twilio does, a header named ``X-Twilio-…`` is dropped (32113), a name that is not a SIP token or not an
``X-`` header (nor one of the few standard ones Twilio lets through) is dropped (13252), and a header part of
1024 characters or more is dropped whole (21227); each drop is a warning on the document.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import unquote
from xml.parsers import expat

MAX_BYTES = 64 * 1024
MAX_DEPTH = 8
MAX_ELEMENTS = 500
MAX_HEADERS_CHARS = 1024
#: standard SIP headers Twilio passes on a ``<Sip>`` URI besides ``X-`` ones
STANDARD_HEADERS = frozenset({"user-to-user", "remote-party-id", "p-preferred-identity", "p-called-party-id"})
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._!%*+`'~-]*$")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class TwimlError(ValueError):
    """A document Twilio would not execute: ``code`` is Twilio's (12100 parse failure, 12200 schema, 11750 size)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class SipUri:
    """``sip:user@host;params?headers``: the headers in their order, values percent-decoded."""

    uri: str
    scheme: str
    user: str
    host: str
    params: dict[str, str]
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Say:
    text: str
    voice: str | None = None
    loop: int = 1


@dataclass(frozen=True)
class Pause:
    length: float = 1.0


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str = "rejected"


@dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True)
class Dial:
    """``<Dial>`` with its one target: ``sip`` (a :class:`SipUri`) or ``number`` (E.164)."""

    sip: SipUri | None = None
    number: str | None = None
    answer_on_bridge: bool = False
    timeout: float = 30.0
    action: str | None = None
    method: str = "POST"
    caller_id: str | None = None
    refer_url: str | None = None
    refer_method: str = "POST"
    time_limit: float = 14400.0
    #: ``record``: ``do-not-record`` or ``record-from-answer``/``record-from-ringing`` (``-dual``: each side on
    #: its own channel); the recording's callback goes to ``recording_callback``
    record: str = "do-not-record"
    recording_callback: str | None = None
    recording_method: str = "POST"

    @property
    def records(self) -> bool:
        return self.record != "do-not-record"


@dataclass(frozen=True)
class Play:
    """``<Play>`` nested in a ``<Gather>`` (its audio is not fetched: it takes no time on the stand-in)."""

    url: str
    loop: int = 1


#: ``speechModel`` values Twilio takes as they are; a specific provider's model starts with one of the prefixes
SPEECH_MODELS = frozenset({"default", "numbers_and_commands", "phone_call", "experimental_conversations",
                           "experimental_utterances"})  # fmt: skip
SPEECH_MODEL_PREFIXES = ("googlev2_", "deepgram_", "google_")
FINISH_KEYS = "0123456789#*"
#: a ``hints`` phrase Twilio takes is at most this long
MAX_HINT_CHARS = 100


@dataclass(frozen=True)
class Gather:
    """``<Gather>``: Twilio listens for ``input`` (``dtmf`` and/or ``speech``) after its nested prompts, then
    requests ``action`` with what it heard (``SpeechResult``, ``Confidence``, ``Digits``); with nothing heard
    for ``timeout`` seconds it goes on with the next verb, unless ``action_on_empty_result``.
    ``speech_timeout`` is ``"auto"`` or whole seconds (``None``: as ``timeout``)."""

    input: frozenset[str] = frozenset({"dtmf"})
    action: str | None = None
    method: str = "POST"
    timeout: int = 5
    speech_timeout: str | int | None = None
    speech_model: str | None = None
    action_on_empty_result: bool = False
    language: str = "en-US"
    hints: tuple[str, ...] = ()
    finish_on_key: str = "#"
    num_digits: int | None = None
    prompts: tuple[Say | Play | Pause, ...] = ()

    @property
    def speech(self) -> bool:
        return "speech" in self.input

    @property
    def dtmf(self) -> bool:
        return "dtmf" in self.input


Verb = Say | Pause | Hangup | Reject | Redirect | Dial | Gather


@dataclass(frozen=True)
class Document:
    verbs: tuple[Verb, ...]
    #: what Twilio would log as a warning and go on (dropped headers, ignored attributes)
    warnings: tuple[str, ...] = field(default=())

    def names(self) -> list[str]:
        return [type(verb).__name__ for verb in self.verbs]


def _refuse_dtd(*_: object) -> None:
    raise TwimlError(12100, "a DTD or entity declaration is not allowed in TwiML")


def _refuse_external(*_: object) -> int:
    raise TwimlError(12100, "an external entity is not allowed in TwiML")


def _prescan(data: bytes) -> None:
    """Expat with every DTD hook refusing, and the depth and element counts bounded."""
    parser = expat.ParserCreate()
    depth = 0
    count = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, count
        depth += 1
        count += 1
        if depth > MAX_DEPTH:
            raise TwimlError(12100, f"elements nested deeper than {MAX_DEPTH}")
        if count > MAX_ELEMENTS:
            raise TwimlError(12100, f"more than {MAX_ELEMENTS} elements")

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_external
    parser.NotationDeclHandler = _refuse_dtd
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise TwimlError(12100, f"not well-formed XML ({expat.ErrorString(exc.code)}, line {exc.lineno})") from None


def _bool(value: str | None, default: bool) -> bool:
    return default if value is None else value.strip().lower() == "true"


def _number(element: ET.Element, name: str, default: float, low: float, high: float) -> float:
    raw = element.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TwimlError(12200, f"<{element.tag}> {name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise TwimlError(12200, f"<{element.tag}> {name}={raw!r} is outside {low:g}..{high:g}")
    return value


def _method(element: ET.Element, name: str) -> str:
    method = (element.get(name) or "POST").upper()
    if method not in ("GET", "POST"):
        raise TwimlError(12200, f"<{element.tag}> {name}={method!r}: only GET or POST")
    return method


def _header_name_problem(name: str) -> str | None:
    if not _TOKEN.match(name):
        return f"13252: header name {name!r} is not a SIP token: dropped"
    lowered = name.lower()
    if lowered.startswith("x-twilio-"):
        return f"32113: header {name!r}: names starting X-Twilio- are Twilio's own: dropped"
    if not lowered.startswith("x-") and lowered not in STANDARD_HEADERS:
        return f"13252: header {name!r} is neither an X- header nor one Twilio passes on: dropped"
    return None


def parse_sip_uri(text: str, warnings: list[str] | None = None) -> SipUri:
    """Parse a ``<Sip>`` noun's URI; dropped headers are appended to ``warnings``."""
    uri = text.strip()
    base, _, query = uri.partition("?")
    scheme, colon, rest = base.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise TwimlError(12200, f"<Sip> {uri[:80]!r} is not a sip: or sips: URI")
    address, *raw_params = rest.split(";")
    user, at, host = address.rpartition("@")
    if not at or not user or not host:
        raise TwimlError(12200, f"<Sip> {uri[:80]!r} has no user@host")
    params: dict[str, str] = {}
    for raw in raw_params:
        key, _, value = raw.partition("=")
        if key:
            params[key.lower()] = value
    headers: list[tuple[str, str]] = []
    notes = warnings if warnings is not None else []
    if len(query) >= MAX_HEADERS_CHARS:
        notes.append(f"21227: the headers part of the SIP URI is {len(query)} characters (under 1024): all dropped")
        query = ""
    for pair in query.split("&") if query else ():
        raw_name, _, raw_value = pair.partition("=")
        name, value = unquote(raw_name), unquote(raw_value)
        problem = _header_name_problem(name)
        if problem is not None:
            notes.append(problem)
            continue
        if "\r" in value or "\n" in value:
            notes.append(f"13252: header {name!r} has a line break in its value: dropped")
            continue
        headers.append((name, value))
    return SipUri(uri, scheme.lower(), unquote(user), host.lower(), params, tuple(headers))


def _dial(element: ET.Element, warnings: list[str]) -> Dial:
    nouns = list(element)
    text = (element.text or "").strip()
    if text and not nouns:
        number = text
    elif len(nouns) != 1:
        raise TwimlError(12200, f"<Dial> needs exactly one noun here (found {len(nouns)})")
    else:
        number = ""
    sip: SipUri | None = None
    if nouns:
        noun = nouns[0]
        if noun.tag == "Sip":
            sip = parse_sip_uri(noun.text or "", warnings)
        elif noun.tag == "Number":
            number = (noun.text or "").strip()
        else:
            raise TwimlError(12200, f"<Dial> noun <{noun.tag}> is not supported by the stand-in")
    if sip is None and not _E164.match(number):
        raise TwimlError(12200, f"<Dial> number {number[:40]!r} is not E.164")
    return Dial(
        sip=sip,
        number=number or None,
        answer_on_bridge=_bool(element.get("answerOnBridge"), False),
        timeout=_number(element, "timeout", 30.0, 5.0, 600.0),
        action=element.get("action"),
        method=_method(element, "method"),
        caller_id=element.get("callerId"),
        refer_url=element.get("referUrl"),
        refer_method=_method(element, "referMethod"),
        time_limit=_number(element, "timeLimit", 14400.0, 1.0, 86400.0),
        record=_record(element),
        recording_callback=element.get("recordingStatusCallback"),
        recording_method=_method(element, "recordingStatusCallbackMethod"),
    )


RECORD_VALUES = ("do-not-record", "record-from-answer", "record-from-ringing", "record-from-answer-dual",
                 "record-from-ringing-dual")  # fmt: skip


def _record(element: ET.Element) -> str:
    value = element.get("record", "do-not-record")
    if value not in RECORD_VALUES:
        raise TwimlError(12200, f"<Dial> record={value[:40]!r}: one of {', '.join(RECORD_VALUES)}")
    return value


def _positive_int(raw: str | None) -> int | None:
    """``raw`` as a positive whole number, else None."""
    value = (raw or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _gather(element: ET.Element, warnings: list[str]) -> Gather:
    raw_input = element.get("input", "dtmf")
    modes = frozenset(raw_input.split())
    if not modes or not modes <= {"dtmf", "speech"}:
        raise TwimlError(12200, f"<Gather> input={raw_input[:40]!r}: dtmf, speech or 'dtmf speech'")
    timeout = 5
    raw = element.get("timeout")
    if raw is not None:
        parsed = _positive_int(raw)
        if parsed is None:
            warnings.append(f"13313: <Gather> timeout={raw[:20]!r} is not a positive whole number of seconds: 5 used")
        else:
            timeout = parsed
    model = element.get("speechModel")
    if model is not None and model not in SPEECH_MODELS and not model.startswith(SPEECH_MODEL_PREFIXES):
        warnings.append(f"13334: <Gather> speechModel={model[:40]!r} is not a model Twilio offers: ignored")
        model = None
    speech_timeout: str | int | None = None
    raw = element.get("speechTimeout")
    if raw is not None:
        if raw.strip() == "auto":
            if model == "default":
                warnings.append("13335: <Gather> speechTimeout='auto' cannot be used with speechModel='default': "
                                "the timeout is used")  # fmt: skip
            else:
                speech_timeout = "auto"
        else:
            speech_timeout = _positive_int(raw)
            if speech_timeout is None:
                warnings.append(f"13327: <Gather> speechTimeout={raw[:20]!r} is neither auto nor a positive whole "
                                "number of seconds: the timeout is used")  # fmt: skip
    on_empty = False
    raw = element.get("actionOnEmptyResult")
    if raw is not None:
        if raw.strip().lower() not in ("true", "false"):
            warnings.append(f"13338: <Gather> actionOnEmptyResult={raw[:20]!r} is not true or false: false used")
        on_empty = raw.strip().lower() == "true"
    finish = element.get("finishOnKey", "#")
    if len(finish) > 1 or (finish and finish not in FINISH_KEYS):
        warnings.append(f"13310: <Gather> finishOnKey={finish[:10]!r} is not one of {FINISH_KEYS!r} or empty: # used")
        finish = "#"
    num_digits: int | None = None
    raw = element.get("numDigits")
    if raw is not None:
        num_digits = _positive_int(raw)
        if num_digits is None:
            warnings.append(f"13314: <Gather> numDigits={raw[:20]!r} is not a positive whole number: ignored")
    hints = tuple(h.strip() for h in (element.get("hints") or "").split(",") if h.strip())
    if any(len(h) > MAX_HINT_CHARS for h in hints):
        warnings.append(f"13330: <Gather> hints has a phrase over {MAX_HINT_CHARS} characters: hints ignored")
        hints = ()
    prompts: list[Say | Play | Pause] = []
    for nested in element:
        if nested.tag == "Say":
            prompts.append(_say(nested))
        elif nested.tag == "Pause":
            prompts.append(Pause(length=_number(nested, "length", 1.0, 0.0, 86400.0)))
        elif nested.tag == "Play":
            loop = int(_number(nested, "loop", 1, 0, 1000))
            prompts.append(Play(url=(nested.text or "").strip(), loop=loop))
        else:
            warnings.append(f"13320: <Gather> may nest <Say>, <Play> and <Pause>, not <{nested.tag[:40]}>: ignored")
    return Gather(
        input=modes,
        action=element.get("action") or None,
        method=_method(element, "method"),
        timeout=timeout,
        speech_timeout=speech_timeout,
        speech_model=model,
        action_on_empty_result=on_empty,
        language=element.get("language") or "en-US",
        hints=hints,
        finish_on_key=finish,
        num_digits=num_digits,
        prompts=tuple(prompts),
    )


def _say(element: ET.Element) -> Say:
    text = "".join(element.itertext()).strip()
    loop = int(_number(element, "loop", 1, 0, 1000))
    return Say(text=text, voice=element.get("voice"), loop=loop)


def _verb(element: ET.Element, warnings: list[str]) -> Verb:
    tag = element.tag
    if tag == "Say":
        return _say(element)
    if tag == "Pause":
        return Pause(length=_number(element, "length", 1.0, 0.0, 86400.0))
    if tag == "Gather":
        return _gather(element, warnings)
    if tag == "Hangup":
        return Hangup()
    if tag == "Reject":
        reason = element.get("reason", "rejected")
        if reason not in ("rejected", "busy"):
            raise TwimlError(12200, f"<Reject> reason={reason!r}: rejected or busy")
        return Reject(reason=reason)
    if tag == "Redirect":
        url = (element.text or "").strip()
        if not url:
            raise TwimlError(12200, "<Redirect> needs a URL")
        return Redirect(url=url, method=_method(element, "method"))
    if tag == "Dial":
        return _dial(element, warnings)
    raise TwimlError(12200, f"<{tag[:40]}> is not a verb the stand-in knows")


def parse_twiml(source: str | bytes) -> Document:
    """Parse one TwiML document; raises :class:`TwimlError` for anything Twilio would not execute."""
    data = source.encode("utf-8") if isinstance(source, str) else source
    if len(data) > MAX_BYTES:
        raise TwimlError(11750, f"TwiML of {len(data)} bytes is over the 64 KiB limit")
    _prescan(data)
    root = ET.fromstring(data)  # safe now: no DTD, bounded size and depth
    if root.tag != "Response":
        raise TwimlError(12200, f"the root element is <{root.tag[:40]}>, not <Response>")
    warnings: list[str] = []
    verbs = tuple(_verb(element, warnings) for element in root)
    return Document(verbs=verbs, warnings=tuple(warnings))
