"""The openai-SDK client against a real HTTP server on loopback: retries and their limits."""

import pytest

from genpi.errors import UserError
from genpi.synth.client import OpenAIChatClient
from chat_server import ChatServer

MSG = [{"role": "user", "content": "hello there"}]


def ask(client):
    return client.chat(MSG, model="m", temperature=0.0, max_tokens=8, seed=1)


@pytest.mark.parametrize("failures", [[429], [500, 503], [429, 502, 500]])
def test_transient_errors_are_retried(failures):
    with ChatServer(fail_codes=failures) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=5)
        r = ask(client)
        assert r.text.startswith("answer(m)")
        assert len(srv.requests) == len(failures) + 1
        assert client.retry_count == len(failures)


def test_timeouts_are_retried():
    with ChatServer(fail_codes=["hang"], hang_seconds=2.0) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, timeout=0.5, retries=3)
        assert ask(client).text
        assert len(srv.requests) == 2 and client.retry_count == 1


def test_unauthorized_is_not_retried_and_is_a_user_error():
    with ChatServer(fail_codes=[401]) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=5)
        with pytest.raises(UserError, match="refused the API key"):
            ask(client)
        assert len(srv.requests) == 1


def test_bad_request_is_not_retried():
    import openai

    with ChatServer(fail_codes=[400]) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=5)
        with pytest.raises(openai.BadRequestError):
            ask(client)
        assert len(srv.requests) == 1


def test_gives_up_after_the_attempt_limit():
    import openai

    with ChatServer(fail_codes=[500] * 10) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=3)
        with pytest.raises(openai.InternalServerError):
            ask(client)
        assert len(srv.requests) == 3


def test_unreachable_server_is_a_user_error():
    from genpi.synth.server import free_port

    client = OpenAIChatClient(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=2)
    with pytest.raises(UserError, match="cannot reach the chat server"):
        ask(client)
