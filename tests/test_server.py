"""The embedded server over HTTP with the openai client and the real tiny model; it stops at once (integration)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from genpi.server import LocalServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(smol_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LocalServer(smol_path, log_path=log) as s:
        yield s


def _client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


SYSTEM = "You are the help desk of a library. Answer in one sentence. Opening hours: 9 to 18, Monday to Saturday."


def test_openai_client_gets_a_completion_and_reused_prompt_tokens(server):
    client = _client(server)
    ask = lambda q: client.chat.completions.create(  # noqa: E731
        model=server.model, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
    first = ask("When do you open on Monday?")
    assert first.choices[0].message.content and first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 20 and 1 <= first.usage.completion_tokens <= 13
    second = ask("Are you open on Sunday?")
    assert second.usage.prompt_tokens_details.cached_tokens > 20  # the system prompt was not computed again
    again = ask("When do you open on Monday?")
    assert again.choices[0].message.content == first.choices[0].message.content  # greedy is deterministic


def test_stop_strings_cut_the_reply_before_them(server):
    client = _client(server)
    ask = lambda **kw: client.chat.completions.create(  # noqa: E731
        model=server.model, max_tokens=40, temperature=0, **kw,
        messages=[{"role": "user", "content": "List the numbers 1 to 10, separated by commas."}])
    free = ask().choices[0].message.content
    word = free.split(",")[3].strip()
    cut = ask(stop=[word, "zzz"]).choices[0]
    assert cut.finish_reason == "stop" and word not in cut.message.content
    assert free.startswith(cut.message.content)


def test_models_and_errors_are_openai_shaped(server):
    import openai

    client = _client(server)
    assert [m.id for m in client.models.list().data] == [server.model]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="'stream' is not supported"):
        client.chat.completions.create(model=server.model, stream=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages must be"):
        client.chat.completions.create(model=server.model, messages=[{"role": "robot", "content": "hi"}])
    req = urllib.request.Request(server.base_url + "/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and "not valid JSON" in json.loads(e.value.read())["error"]["message"]


def test_sigterm_stops_the_server_at_once_with_a_request_in_flight(smol_path, tmp_path):
    import threading

    with LocalServer(smol_path, log_path=tmp_path / "server.log") as s:
        threading.Thread(target=lambda: _quiet(lambda: _client(s).chat.completions.create(
            model=s.model, max_tokens=2000, messages=[{"role": "user", "content": "Tell me a very long story."}])),
            daemon=True).start()
        time.sleep(2)  # decoding
        started = time.monotonic()
        os.killpg(s.process.pid, signal.SIGTERM)
        s.process.wait(timeout=10)
        assert time.monotonic() - started < 5
    assert "stopping on signal 15" in (tmp_path / "server.log").read_text()


def _quiet(fn):
    try:
        fn()
    except Exception:
        pass


def test_genpi_serve_answers_as_each_adapter_with_the_openai_client(smol_path, tmp_path):
    """`genpi serve --adapter DIR`: the base model and the adapter (merged) side by side on one endpoint."""
    import openai
    from eval_fixtures import make_adapter

    from genpi.models import load_model
    from genpi.server import free_port

    adapter = make_adapter(tmp_path / "bash", load_model("default"), seed=3,
                           extra={"student_context": [{"role": "system", "content": "You answer in one line."}]})
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genpi", "serve", "--adapter", str(adapter), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 180
        while True:
            try:
                served = [m.id for m in client.models.list().data]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.5)
        assert served == ["default", "bash"]  # the base under its name, the adapter under its directory's
        ask = lambda model: client.chat.completions.create(  # noqa: E731
            model=model, max_tokens=16, temperature=0, messages=[{"role": "user", "content": "List the files in /tmp."}])
        base, internalized = ask("default"), ask("bash")
        assert base.choices[0].message.content and internalized.choices[0].message.content
        assert internalized.choices[0].message.content != base.choices[0].message.content  # the adapter answers
        from genpi.models import load_tokenizer

        context = [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "List the files in /tmp."}]
        with_context = load_tokenizer("default").apply_chat_template(context, add_generation_prompt=True, tokenize=True)
        ids = with_context["input_ids"] if hasattr(with_context, "keys") else with_context
        assert internalized.usage.prompt_tokens == len(ids)  # its student context, not the template's default one
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) is not None


def test_continue_final_message_lets_the_model_write_the_user_turn(server):
    """vLLM's extra parameters: with the final user turn left open, the reply continues that turn (Magpie-style)."""
    import openai

    client = _client(server)
    open_user = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "My question is:"}]
    ask = lambda **kw: client.chat.completions.create(  # noqa: E731
        model=server.model, max_tokens=24, temperature=0, messages=open_user, **kw)
    as_assistant = ask()
    as_user = ask(extra_body={"add_generation_prompt": False, "continue_final_message": True})
    assert as_user.choices[0].message.content != as_assistant.choices[0].message.content
    # The continued turn's rendering ends at the open text: its prompt has fewer tokens (no end of turn, no
    # assistant header) than the one the assistant answers.
    assert as_user.usage.prompt_tokens < as_assistant.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        ask(extra_body={"add_generation_prompt": True, "continue_final_message": True})
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt must be"):
        ask(extra_body={"add_generation_prompt": "no"})
