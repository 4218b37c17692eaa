"""Chat box: talk with an assistant in JupyterLab, with its history shown, Reset, and an editable system prompt.

The box only draws and collects text; the conversation itself is a `generation.ChatSession`,
the same one `./run chat` uses. Tests drive it as a learner would: type into `message`, then
`send_button.click()`.
"""

from __future__ import annotations

import html
import time

import ipywidgets as w

from course_lib.errors import CourseError
from course_lib.generation import ChatSession, Reply

ROLE_STYLE = {  # who speaks, and how their turn looks
    "system": ("system", "#f3f3f3", "#666"),
    "user": ("you", "#e8f0fe", "#1a3d7c"),
    "assistant": ("assistant", "#eaf6ea", "#1e5b1e"),
}


class ChatBox:
    """A system prompt, the conversation so far, a message box, Send and Reset."""

    def __init__(self, session: ChatSession, placeholder: str = "Type a message and press Send"):
        self.session = session
        self.system = w.Textarea(value=session.system or "", description="system prompt",
                                 style={"description_width": "100px"},
                                 layout=w.Layout(width="100%", height="48px"))
        self.history = w.HTML()
        self.message = w.Text(placeholder=placeholder, layout=w.Layout(width="70%"))
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.reset_button = w.Button(description="Reset", icon="refresh",
                                     tooltip="forget the conversation; start again with the system prompt above")
        self.status = w.HTML()
        self.last: Reply | None = None
        self.send_button.on_click(self.on_send_clicked)
        self.reset_button.on_click(self.on_reset_clicked)
        self._draw()

    def widget(self) -> w.Widget:
        """The chat box, ready for display()."""
        return w.VBox([self.system, self.history, w.HBox([self.message, self.send_button, self.reset_button]),
                       self.status])

    def on_send_clicked(self, _button: w.Button | None = None) -> Reply | None:
        """What Send does: the typed message becomes a turn, and the model replies to the whole history."""
        text = self.message.value.strip()
        if not text:
            self.status.value = "<i>Type a message first.</i>"
            return None
        if not any(m["role"] == "user" for m in self.session.messages):
            self.session.reset(self.system.value)  # a prompt edited before the first turn counts
        self.send_button.disabled = True
        self.status.value = "<i>writing…</i>"
        start = time.perf_counter()
        try:
            self.last = self.session.say(text)
        except CourseError as exc:
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
            return None
        finally:
            self.send_button.disabled = False
        self.message.value = ""
        self._draw()
        ending = "ended its turn itself" if self.last.stopped else (
            f"stopped by the limit of {self.session.decode.max_new_tokens} new tokens")
        self.status.value = (f"<i>replied in {time.perf_counter() - start:.1f} s: {self.last.tokens} tokens, "
                             f"{ending}</i>")
        return self.last

    def on_reset_clicked(self, _button: w.Button | None = None) -> None:
        """What Reset does: forget every turn and start again with the system prompt as typed now."""
        self.session.reset(self.system.value)
        self.last = None
        self._draw()
        self.status.value = "<i>conversation cleared</i>"

    def _draw(self) -> None:
        turns = [_bubble(m["role"], m["content"]) for m in self.session.messages]
        self.history.value = "".join(turns) or "<i>No messages yet.</i>"


def _bubble(role: str, text: str) -> str:
    name, background, colour = ROLE_STYLE[role]
    return (f"<div style='background:{background};border-radius:6px;padding:4px 8px;margin:3px 0'>"
            f"<b style='color:{colour}'>{name}:</b> {html.escape(text)}</div>")
