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
    from genpi.serving.local import free_port

    client = OpenAIChatClient(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=2)
    with pytest.raises(UserError, match="cannot reach the chat server"):
        ask(client)


def test_a_timeout_after_every_retry_is_an_error_of_that_call_not_an_unreachable_server():
    import openai

    with ChatServer(fail_codes=["hang", "hang"], hang_seconds=1.5) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, timeout=0.3, retries=2)
        with pytest.raises(openai.APITimeoutError):
            ask(client)


@pytest.mark.parametrize("code, needle", [(404, "no model 'm'"), (403, "refused the API key")])
def test_unknown_model_and_forbidden_are_user_errors(code, needle):
    with ChatServer(fail_codes=[code]) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=5)
        with pytest.raises(UserError, match=needle):
            ask(client)
        assert len(srv.requests) == 1


def test_credentials_in_the_url_reach_no_message():
    from genpi.synth.client import public_url
    from genpi.serving.local import free_port

    url = f"http://user:hunter2@127.0.0.1:{free_port()}/v1?api-key=hunter2"
    assert public_url(url) == url.replace("user:hunter2@", "").replace("?api-key=hunter2", "")
    with pytest.raises(UserError) as e:
        ask(OpenAIChatClient(base_url=url, retries=1))
    assert "hunter2" not in str(e.value)


def test_a_closed_client_stops_retrying():
    import openai

    with ChatServer(fail_codes=[500] * 10) as srv:
        client = OpenAIChatClient(base_url=srv.base_url, retries=5)
        client.close()
        with pytest.raises(openai.InternalServerError):
            ask(client)
        assert len(srv.requests) == 1
