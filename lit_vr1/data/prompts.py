"""Prompt templates and the conversion of a question with ``<image>`` markers into chat messages."""

from __future__ import annotations

from lit_vr1.rules import enforce, rule

# ``{question}`` is the human turn; images go where its <image> markers stand.
TEMPLATES: dict[str, str] = {
    # Plain: the question as written in the data.
    "plain": "{question}",
    # The R1 instruction (DeepSeek-R1, as VLM-R1 phrases it for images): reason first, then answer.
    "r1": (
        "{question} First think about the question step by step inside <think> </think> tags, "
        "then give the final answer inside <answer> </answer> tags."
    ),
    # Qwen2.5-VL's grounding instruction: boxes as a JSON list of {"bbox_2d", "label"}.
    "qwen_rec": '{question} Answer with a JSON list such as [{{"bbox_2d": [x1, y1, x2, y2], "label": "name"}}].',
    # Both: reasoning in <think>, the JSON boxes in <answer> (VLM-R1's REC training prompt).
    "r1_rec": (
        "{question} First think inside <think> </think> tags, then give the answer inside <answer> </answer> "
        'tags as a JSON list such as [{{"bbox_2d": [x1, y1, x2, y2], "label": "name"}}].'
    ),
}

# The yes/no question a judge model is asked about a candidate answer (lit_vr1.rewards.reward_model);
# the synthetic "judge" task writes training pairs in exactly this wording.
DEFAULT_JUDGE_PROMPT = (
    "Question: {question}\n"
    "Candidate answer: {answer}\n"
    "Looking at the image, is the candidate answer a correct and complete answer to the question? "
    'Reply with one word: "yes" or "no".'
)


@rule("data.template", "config")
def template_known(name: str) -> str | None:
    if name in TEMPLATES:
        return None
    return f"data.template={name!r} is not a known prompt template; choose one of {', '.join(TEMPLATES)}"


def check_template(name: str) -> str:
    """``name`` if it is a known prompt template; a clear error otherwise."""
    enforce(template_known(name))
    return name


IMAGE_MARKER = "<image>"
_SLOT = "\x00"  # stands for a marker while the template is applied


def build_messages(question: str, num_images: int, template: str = "plain", system: str | None = None) -> list[dict]:
    """One user turn: the templated question with each image where its ``<image>`` marker
    stands ("Is <image> brighter than <image>?" -> text, image, text, image, text), in
    order, after a system turn when ``system`` is given (the data's; without one the chat
    template writes its own default, Qwen's "You are a helpful assistant."). A question
    without markers gets its images before the text (as VLM-R1 does). Markers that do not
    match the images one to one raise ValueError (the data checks report it with the file
    and line first)."""
    markers = question.count(IMAGE_MARKER)
    if markers and markers != num_images:
        raise ValueError(f"the question has {markers} {IMAGE_MARKER} marker(s) but the sample has {num_images} "
                         "image(s); write one marker per image, or none (then the images go first)")
    content: list[dict] = []
    if not markers:
        content = [{"type": "image"} for _ in range(num_images)]
    text = TEMPLATES[check_template(template)].format(question=question.replace(IMAGE_MARKER, _SLOT).strip())
    pieces = text.split(_SLOT)
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image"})
        piece = piece.lstrip() if i == 0 else piece
        piece = piece.rstrip() if i == len(pieces) - 1 else piece
        if piece:
            content.append({"type": "text", "text": piece})
    user = {"role": "user", "content": content}
    return [{"role": "system", "content": system}, user] if system else [user]


def system_text(messages: list[dict]) -> str | None:
    """The system turn's text of ``messages`` built by :func:`build_messages` (None: none)."""
    return messages[0]["content"] if messages and messages[0].get("role") == "system" else None
