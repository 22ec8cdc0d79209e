"""The far party's script across one Twilio call (#16): where the person is in their ``steps`` while the call moves
between OpenAI legs and ``<Gather>`` (a long hold parked on Twilio).

A person has one script for the whole call. Each OpenAI leg runs what is left of it; when a leg ends (the
controller parked the call: Twilio's update ended the ``<Dial>`` and hung the leg up), the leg's record
(:attr:`SimCall.steps_done <.records.SimCall.steps_done>` and the step under way) says how far it got, and what
it had not reached is what a ``<Gather>`` hears next:

- a ``say`` the leg spoke belongs to the past (its answer too, or it is lost); one cut off mid-sentence is said
  again;
- a ``hold_music`` step goes on where it was: the parts (``every`` seconds each) that began on the leg are over;
- a ``wait`` goes on for what is left of it.

What a ``<Gather>`` hears moves the script on too (:meth:`take_step`, :meth:`take_chunk`, :meth:`take_wait`); a
``say`` it heard with a ``reply`` (or ``tool``) is the *opening* of the next leg: there the person does not speak
first, and the model answers the controller's greeting with that reply (:attr:`CallSpec.opening
<.scenario.CallSpec.opening>`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import SimCall
from .scenario import Step


@dataclass
class _LegStart:
    """Where the script was when a leg began: its steps are ``steps[pos:]`` with the first one shortened."""

    leg: SimCall
    pos: int
    chunks: int
    waited: float


class PersonScript:
    """One Twilio call's far party: a person's ``steps`` (``person``), or a machine (nothing to say, ever)."""

    def __init__(self, steps: list[Step], *, person: bool, time_scale: float) -> None:
        self.steps = list(steps)
        self.person = person
        self.time_scale = time_scale
        #: the next step (``len(steps)``: the script has run out)
        self.pos = 0
        #: of a ``hold_music`` step at ``pos``: the parts already played; of a ``wait``: the nominal seconds passed
        self.chunks = 0
        self.waited = 0.0
        #: a ``say`` a ``<Gather>`` heard, whose reply opens the next leg
        self.opening: Step | None = None
        self._leg: _LegStart | None = None

    # ---- reading ---------------------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.steps)

    def current(self) -> Step | None:
        """The step the person is at, shortened by what already passed of it; None once the script has run out."""
        if self.exhausted:
            return None
        step = self.steps[self.pos]
        if step.hold_music is not None and self.chunks:
            return step.model_copy(update={"hold_music": step.hold_music.after(self.chunks)})
        if step.wait is not None and self.waited:
            return step.model_copy(update={"wait": max(0.0, step.wait - self.waited)})
        return step

    def wait_left(self) -> float:
        """Nominal seconds left of the ``wait`` step at ``pos``."""
        step = self.current()
        return (step.wait or 0.0) if step is not None else 0.0

    # ---- legs --------------------------------------------------------------------------------------------

    def for_leg(self) -> tuple[list[Step], Step | None]:
        """What the next OpenAI leg runs: the steps left (the first shortened) and the opening (taken: a later leg
        does not open with it again)."""
        self.sync()
        first = self.current()
        steps = ([first] if first is not None else []) + self.steps[self.pos + 1 :]
        opening, self.opening = self.opening, None
        return steps, opening

    def leg_began(self, leg: SimCall) -> None:
        """``leg`` runs the steps :meth:`for_leg` gave: :meth:`sync` reads how far it got."""
        self._leg = _LegStart(leg, self.pos, self.chunks, self.waited)

    def sync(self) -> None:
        """Move on by what the last leg ran (once: it is forgotten after). Its record says how many of its steps
        are over and how far the one under way got; the leg has ended (a ``<Gather>`` or a new leg comes after its
        ``<Dial>``), or it is being abandoned as it stands."""
        start, self._leg = self._leg, None
        if start is None:
            return
        leg = start.leg
        done = leg.steps_done
        self.pos = min(len(self.steps), start.pos + done)
        self.chunks, self.waited = (start.chunks, start.waited) if done == 0 else (0, 0.0)
        if leg.step_index != done or self.exhausted:  # nothing under way: the next step has not begun
            return
        step = self.steps[self.pos]
        if step.hold_music is not None:
            self.chunks += leg.step_chunks
            if self.chunks >= step.hold_music.chunks:
                self.take_step()
        elif step.wait is not None and leg.step_started_at is not None:
            ended = leg.ended_at if leg.ended_at is not None else leg.step_started_at
            self.waited += max(0.0, (ended - leg.step_started_at) / self.time_scale)
            if self.waited >= step.wait:
                self.take_step()
        # a say cut off mid-sentence (or keypad digits): the person starts it again

    # ---- what a <Gather> hears -------------------------------------------------------------------------

    def take_step(self) -> None:
        """The step at ``pos`` is over."""
        self.pos = min(len(self.steps), self.pos + 1)
        self.chunks, self.waited = 0, 0.0

    def take_chunk(self) -> None:
        """One part of the ``hold_music`` at ``pos`` has played (the step is over after its last)."""
        step = self.steps[self.pos] if not self.exhausted else None
        self.chunks += 1
        if step is None or step.hold_music is None or self.chunks >= step.hold_music.chunks:
            self.take_step()

    def take_wait(self, seconds: float) -> None:
        """``seconds`` of the ``wait`` at ``pos`` have passed (the step is over once all have)."""
        self.waited += seconds
        if self.wait_left() <= 0:
            self.take_step()
