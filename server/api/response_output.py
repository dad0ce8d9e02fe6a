"""The output items of one Responses API response, built as its generation comes, and the
stream events that tell each step. The same builder makes a streamed and a non-streamed
response, so both hold the same items."""

from __future__ import annotations

import secrets
from typing import Any

from server.api.openai_models import ChatTokenLogprob
from server.api.responses_models import (
    FunctionCallItem,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseObject,
)

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """An id as OpenAI writes them (`resp_...`, `msg_...`, `fc_...`), unguessable: a stored
    response is reached by its id alone."""
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseOutput:
    """Feed it text and calls in the order the model wrote them, then `finish`; `items` are
    the response's output, and each method returns the events that tell what it added, with
    sequence numbers counted across the stream. `logprobs` false leaves them out of the
    output text (they were not asked for)."""

    def __init__(self, logprobs: bool) -> None:
        self.items: list[OutputItem] = []
        self._logprobs = logprobs
        self._sequence = 0
        self._open: OutputMessage | None = None  # the message whose text is still coming
        self._space = ""  # white space with no message open yet, and its tokens' logprobs
        self._space_logprobs: list[ChatTokenLogprob] = []
        self._flushing = False
        self._unsent: list[ChatTokenLogprob] = []  # the open text's, for its next delta

    def started(self, response: ResponseObject) -> list[Event]:
        """response.created and response.in_progress, for the response as it starts."""
        data = response.model_dump(mode="json")
        return [self._event("response.created", response=data),
                self._event("response.in_progress", response=data)]  # fmt: skip

    def text(self, delta: str, logprobs: list[ChatTokenLogprob] | None = None) -> list[Event]:
        """More of the answer's text (and its tokens' logprobs): a message item opens for it
        when none is open."""
        events: list[Event] = []
        if self._open is None and self.items and not self._flushing:
            delta = delta.lstrip()  # a message after a call starts at its text
        if self._open is None and not delta.strip() and not self._flushing:
            # white space before a call is not a message (a chat answer strips it): it waits
            # for text, and goes if a call comes first
            self._space += delta
            self._space_logprobs += logprobs or []
            return events
        if self._open is None:
            delta, self._space = self._space + delta, ""
            logprobs, self._space_logprobs = self._space_logprobs + list(logprobs or []), []
            part = OutputText(text="", logprobs=[] if self._logprobs else None)
            self._open = OutputMessage(id=new_id("msg"), status="in_progress", content=[part])
            self.items.append(self._open)
            item = self._open.model_copy(update={"content": []})
            events.append(self._added(item))
            events.append(self._part_event("response.content_part.added", part))
        part = self._open.content[0]
        part.text += delta
        entries = list(logprobs or []) if self._logprobs else []
        if part.logprobs is not None:
            part.logprobs.extend(entries)
        entries, self._unsent = self._unsent + entries, []
        if not delta:  # text held back (a partial character or tag): no empty delta
            self._unsent = entries  # its tokens' logprobs go with the next one
            return events
        events.append(self._part_event(
            "response.output_text.delta", None, delta=delta,
            logprobs=[e.model_dump(mode="json") for e in entries],
        ))  # fmt: skip
        return events

    def call(self, call_id: str, name: str, arguments: str, cut: bool = False) -> list[Event]:
        """A whole function call (the model's text so far closes first); `cut`: its block
        never closed, as max_output_tokens ended the answer inside it."""
        events = self._close_message("completed")
        self._space, self._space_logprobs = "", []
        item = FunctionCallItem(id=new_id("fc"), call_id=call_id, name=name, arguments="",
                                status="in_progress")  # fmt: skip
        self.items.append(item)
        index = len(self.items) - 1
        events.append(self._added(item))
        item.arguments, item.status = arguments, "incomplete" if cut else "completed"
        events.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                  output_index=index, delta=arguments))  # fmt: skip
        events.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                  output_index=index, name=name, arguments=arguments))  # fmt: skip
        events.append(self._done(item, index))
        return events

    def finish(self, incomplete: bool) -> list[Event]:
        """The end of the generation: the open message closes, as incomplete when the answer
        was cut short (max_output_tokens)."""
        events: list[Event] = []
        if self._space and not self.items:  # an answer of white space only
            self._flushing = True
            events += self.text("")
        return events + self._close_message("incomplete" if incomplete else "completed")

    def ended(self, response: ResponseObject) -> Event:
        """response.completed, response.incomplete or response.failed, as its status says."""
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            response.status, "response.failed"
        )
        return self._event(kind, response=response.model_dump(mode="json"))

    def error(self, message: str, code: str) -> Event:
        return self._event("error", code=code, message=message, param=None)

    def _close_message(self, status: str) -> list[Event]:
        message, self._open = self._open, None
        self._unsent = []  # in the part's logprobs, which output_text.done carries
        if message is None:
            return []
        message.status = status  # type: ignore[assignment]
        index = self.items.index(message)
        part = message.content[0]
        return [
            self._part_event("response.output_text.done", part, index=index),
            self._part_event("response.content_part.done", part, index=index),
            self._done(message, index),
        ]

    def _added(self, item: OutputMessage | FunctionCallItem) -> Event:
        return self._event("response.output_item.added", output_index=len(self.items) - 1,
                           item=item.model_dump(mode="json"))  # fmt: skip

    def _done(self, item: OutputMessage | FunctionCallItem, index: int) -> Event:
        return self._event("response.output_item.done", output_index=index,
                           item=item.model_dump(mode="json"))  # fmt: skip

    def _part_event(
        self, kind: str, part: OutputText | None, index: int | None = None, **fields: Any
    ) -> Event:
        """An event of the open message's text part: the whole part (added and done events),
        its text (output_text.done, with its logprobs) or a delta (given in `fields`)."""
        message = self._open if index is None else self.items[index]
        assert isinstance(message, OutputMessage)
        where = {"item_id": message.id, "output_index": self.items.index(message),
                 "content_index": 0}  # fmt: skip
        if kind == "response.output_text.done" and part is not None:
            fields = {"text": part.text,
                      "logprobs": [e.model_dump(mode="json") for e in part.logprobs or []]}
        elif part is not None:
            fields = {"part": part.model_dump(mode="json")}
        return self._event(kind, **where, **fields)

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event
