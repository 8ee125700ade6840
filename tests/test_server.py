"""The embedded server over HTTP with the openai client and the real tiny model; it stops at once (integration)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from genpi.serving.local import LocalServer, free_port
from genpi.serving.protocol import ReplyText

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
    with pytest.raises(openai.BadRequestError, match="'tools' is not supported") as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.value.body == {"message": "'tools' is not supported by the genpi server", "type": "invalid_request_error",
                            "param": "tools", "code": "unsupported_parameter"}  # OpenAI's error object, as the SDK reads it
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model=server.model, top_logprobs=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="temperature must be a number from 0 to 2"):
        client.chat.completions.create(model=server.model, temperature=5, messages=[{"role": "user", "content": "hi"}])
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


def test_genpi_serve_answers_for_several_adapters_and_a_prompt_by_name_concurrently(smol_path, tmp_path):
    """`genpi serve --adapter DIR --adapter NAME=DIR --prompt NAME=FILE`: one base, adapters per request, the
    prompted arm with its prefix cached; concurrent requests for all of them give what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import openai
    from eval_fixtures import make_adapter

    from genpi.models import load_model

    adapter = make_adapter(tmp_path / "bash", load_model("default"), seed=3,
                           extra={"student_context": [{"role": "system", "content": "You answer in one line."}]})
    other = make_adapter(tmp_path / "other-dir", load_model("default"), seed=4)
    prompt = Path(__file__).parents[1] / "examples" / "support_agent.txt"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genpi", "serve", "--adapter", str(adapter), "--adapter",
                             f"support={other}", "--prompt", f"support-prompted={prompt}", "--port", str(port)],
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
        assert served == ["default", "support-prompted", "bash", "support"]
        ask = lambda model: client.chat.completions.create(  # noqa: E731
            model=model, max_tokens=8, temperature=0, logprobs=True,
            messages=[{"role": "user", "content": "List the files in /tmp."}])
        alone = {m: ask(m) for m in served}
        with ThreadPoolExecutor(4) as pool:  # all four at once: they share the engine's batches
            together = list(pool.map(ask, served))
        for m, reply in zip(served, together):
            assert reply.choices[0].message.content == alone[m].choices[0].message.content, m
        assert all(alone[m].choices[0].message.content for m in served)
        # each adapter answers through its own weights (these two happen to write the same words: their
        # probabilities tell them apart)
        first = {m: round(alone[m].choices[0].logprobs.content[0].logprob, 4) for m in ("default", "bash", "support")}
        assert len(set(first.values())) == 3, first
        from genpi.models import load_tokenizer

        context = [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "List the files in /tmp."}]
        with_context = load_tokenizer("default").apply_chat_template(context, add_generation_prompt=True, tokenize=True)
        ids = with_context["input_ids"] if hasattr(with_context, "keys") else with_context
        assert alone["bash"].usage.prompt_tokens == len(ids)  # its student context, not the template's default one
        prompted = together[1].usage  # the prompt arm's second request: the prompt came from the cache
        assert prompted.prompt_tokens > alone["default"].usage.prompt_tokens + 100
        assert prompted.prompt_tokens_details.cached_tokens > 100
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) is not None


# --- the openai SDK as agent frameworks call it: streaming, async, n, logprobs


def _ask(client, model, **kw):
    kw.setdefault("messages", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where do I return a book?"}])
    return client.chat.completions.create(model=model, max_tokens=kw.pop("max_tokens", 24), temperature=0, **kw)


def test_a_stream_has_the_same_text_as_the_whole_reply_and_usage_last(server):
    client = _client(server)
    whole = _ask(client, server.model)
    chunks = list(_ask(client, server.model, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 5  # token by token
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(_ask(client, server.model, stream=True))  # without include_usage: no usage chunk
    assert all(c.choices and c.usage is None for c in plain)


def test_a_stream_never_sends_text_past_a_stop_string(server):
    client = _client(server)
    messages = [{"role": "user", "content": "List the numbers 1 to 10, separated by commas."}]
    free = _ask(client, server.model, messages=messages, max_tokens=40).choices[0].message.content
    word = free.split(",")[3].strip()
    chunks = list(_ask(client, server.model, messages=messages, max_tokens=40, stop=[word], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert word not in text and free.startswith(text) and chunks[-1].choices[0].finish_reason == "stop"


def test_reply_text_holds_back_what_may_begin_a_stop_string():
    pieces = {1: "Hel", 2: "lo EN", 3: "D now"}
    text = ReplyText(lambda ids: "".join(pieces[i] for i in ids), stop=["END"])
    assert text.push(1) == "H"  # "el" could begin "END"
    assert text.push(2) == "ello "  # "EN" could still
    assert text.push(3) == "" and text.end() == "" and text.final() == "Hello " and text.cut


def test_async_clients_stream_and_complete_concurrently(server):
    import asyncio

    import openai

    async def run():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        questions = ["When do you open?", "Can I print here?", "Do you have audiobooks?"]
        ask = lambda q, **kw: client.chat.completions.create(  # noqa: E731
            model=server.model, max_tokens=16, temperature=0, **kw,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])

        async def streamed(q):
            parts = []
            async for c in await ask(q, stream=True):
                parts.append(c.choices[0].delta.content or "")
            return "".join(parts)

        whole = await asyncio.gather(*(ask(q) for q in questions))
        streams = await asyncio.gather(*(streamed(q) for q in questions))
        await client.close()
        return [w.choices[0].message.content for w in whole], streams

    whole, streams = asyncio.run(run())
    assert whole == streams and all(whole)


def test_n_choices_are_seeded_and_batched_together(server):
    client = _client(server)
    ask = lambda seed: client.chat.completions.create(  # noqa: E731
        model=server.model, max_tokens=12, temperature=1.0, n=3, seed=seed,
        messages=[{"role": "user", "content": "Write a short line about the sea."}])
    a, b = ask(5), ask(5)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert len({c.message.content for c in a.choices}) > 1  # each choice its own sample
    assert a.usage.prompt_tokens == b.usage.prompt_tokens < a.usage.completion_tokens + a.usage.prompt_tokens
    streamed = list(client.chat.completions.create(
        model=server.model, max_tokens=12, temperature=1.0, n=3, seed=5, stream=True,
        messages=[{"role": "user", "content": "Write a short line about the sea."}]))
    by_choice = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices[0].index == i) for i in range(3)]
    assert by_choice == [c.message.content for c in a.choices]


def test_logprobs_follow_openais_shape_and_match_the_stream(server):
    client = _client(server)
    whole = _ask(client, server.model, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert "".join(t.token for t in content) == whole.choices[0].message.content  # one entry per reply token
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-4  # greedy: the top one
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    assert content[0].token == content[0].top_logprobs[0].token
    streamed = [e for c in _ask(client, server.model, logprobs=True, top_logprobs=3, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    assert _ask(client, server.model).choices[0].logprobs is None  # not asked for


def _health(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as r:
        return json.loads(r.read())


def _until(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_connection_reset_by_its_client_is_not_a_traceback_in_the_log(server):
    """A pooled keep-alive connection that its client resets (seen in CI) is a client gone, not a server error."""
    import socket
    import struct

    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
        sock.close()
    assert _ask(_client(server), server.model).choices[0].message.content  # the server goes on
    time.sleep(0.5)
    assert "Traceback" not in server.log_path.read_text()


def test_a_client_that_goes_away_has_its_request_cancelled_in_the_engine(server):
    import http.client

    import openai

    model = lambda: _health(server)["models"][server.model]  # noqa: E731
    before = model()["cancelled"]
    body = json.dumps({"model": server.model, "max_tokens": 3000, "messages": [
        {"role": "user", "content": "Tell me a very long story about a lighthouse."}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(TimeoutError):
        conn.getresponse()  # the client times out, and closes its connection
    conn.close()
    assert _until(lambda: model()["cancelled"] == before + 1 and model()["running"] == 0)
    # a stream closed after a few chunks: the same
    stream = _client(server).chat.completions.create(
        model=server.model, max_tokens=3000, stream=True,
        messages=[{"role": "user", "content": "Tell me a very long story about a lighthouse."}])
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert _until(lambda: model()["cancelled"] == before + 2 and model()["running"] == 0)
    assert _ask(_client(server), server.model).choices[0].message.content  # the server goes on
    log = server.log_path.read_text()
    assert log.count("client gone") >= 2 and "POST /v1/chat/completions 200 model=" in log and "ttft=" in log
    assert "Traceback" not in log and "BrokenPipe" not in log
    assert isinstance(openai, object)


def test_overload_is_answered_503_with_retry_after(smol_path, tmp_path):
    import threading

    import openai

    with LocalServer(smol_path, log_path=tmp_path / "server.log", flags=["--rows", "1", "--max-waiting", "1"]) as s:
        long = lambda: _quiet(lambda: _client(s).chat.completions.create(  # noqa: E731
            model=s.model, max_tokens=3000, messages=[{"role": "user", "content": "Tell me a very long story."}]))
        state = lambda: {k: v for k, v in _health(s)["models"][s.model].items() if k != "cancelled"}  # noqa: E731
        # One at a time: two sent together can both arrive before the engine takes the first, and then the
        # second is (rightly) the overflow.
        threading.Thread(target=long, daemon=True).start()
        assert _until(lambda: state()["running"] == 1, 60), state()
        threading.Thread(target=long, daemon=True).start()  # waits for the only row
        assert _until(lambda: state() == {"running": 1, "waiting": 1}, 60), state()
        with pytest.raises(openai.InternalServerError) as e:
            _ask(_client(s), s.model)
        assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "overloaded"


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
