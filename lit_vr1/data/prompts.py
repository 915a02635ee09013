"""Prompt templates and the conversion of a question with ``<image>`` markers into chat messages."""

from __future__ import annotations

# ``{question}`` is the human turn without its <image> markers.
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


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"data.template={name!r} is not a known prompt template; choose one of {', '.join(TEMPLATES)}")
    return name


def build_messages(question: str, num_images: int, template: str = "plain") -> list[dict]:
    """One user turn: image items where the question has ``<image>`` markers, then the
    templated text. Images the question does not mark are placed before the text (as
    VLM-R1 does). More markers than images is an error, raised by the caller with the
    file and line."""
    markers = question.count("<image>")
    if markers > num_images:
        raise ValueError(f"the question has {markers} <image> markers but the sample has {num_images} images")
    text = question.replace("<image>", "").strip()
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": TEMPLATES[check_template(template)].format(question=text)})
    return [{"role": "user", "content": content}]
