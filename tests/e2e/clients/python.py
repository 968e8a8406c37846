#!/usr/bin/env python3
"""Python HTTPS clients of the client matrix (run from scripts/client-venv.sh's venv).

usage: python.py --client urllib|requests|httpx|httpx-h2|openai|anthropic --allowed BASE --other BASE

Sends one request to BASE/python-<client> on the allowed and on the other base URL (two hosts, so two
connections), each with the placeholder from $API_KEY in a header and in the body, the way an application
using that library would. The SDKs are the real openai and anthropic packages pointed at the test server
with base_url and max_retries=0; they cannot parse the server's "ok" answer, which is fine: the request is
what the test checks, so only a failure to send counts as an error.

S5: the plain HTTP clients keep the body bytes they handed to the library and exit 1 printing "S5 VIOLATION"
when those no longer hold the placeholder after the request (kloak writes the placeholder back once OpenSSL
is done with them). The SDKs build their own JSON, so there is no buffer of ours to check.
Prints "client python-<client> pid <pid>" first, so the test can pick this process's events.
"""
import argparse
import os
import ssl
import sys
import urllib.request


def send_urllib(url, key, body):
    context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        response.read()
        return response.status


def send_requests(url, key, body):
    import requests

    response = requests.post(url, data=body, headers={"Authorization": f"Bearer {key}"},
                             verify=os.environ["SSL_CERT_FILE"], timeout=20)
    return response.status_code


def send_httpx(url, key, body, http2=False):
    import httpx

    # httpx takes SSL_CERT_FILE from the environment, as applications get it.
    with httpx.Client(http1=not http2, http2=http2, timeout=20) as client:
        response = client.post(url, content=body, headers={"Authorization": f"Bearer {key}"})
        if http2 and response.http_version != "HTTP/2":
            raise RuntimeError(f"asked for HTTP/2, got {response.http_version}")
        return response.status_code


def send_openai(url, key, body):
    import openai

    client = openai.OpenAI(api_key=key, base_url=url, max_retries=0, timeout=20)
    try:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": body}])
    except (openai.APIConnectionError, openai.APITimeoutError):
        raise
    except Exception as err:  # the "ok" answer is not a completion: the request went out
        return f"sent ({type(err).__name__})"
    return "sent"


def send_anthropic(url, key, body):
    import anthropic

    client = anthropic.Anthropic(api_key=key, base_url=url, max_retries=0, timeout=20)
    try:
        client.messages.create(model="claude-test", max_tokens=16,
                               messages=[{"role": "user", "content": body}])
    except (anthropic.APIConnectionError, anthropic.APITimeoutError):
        raise
    except Exception as err:  # the "ok" answer is not a message: the request went out
        return f"sent ({type(err).__name__})"
    return "sent"


# Clients handed our body bytes; the SDKs get a str they serialise themselves.
HANDS_BYTES = {"urllib", "requests", "httpx", "httpx-h2"}
SENDERS = {
    "urllib": send_urllib,
    "requests": send_requests,
    "httpx": send_httpx,
    "httpx-h2": lambda url, key, body: send_httpx(url, key, body, http2=True),
    "openai": send_openai,
    "anthropic": send_anthropic,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, choices=sorted(SENDERS))
    parser.add_argument("--allowed", required=True, help="base URL of the allowed host")
    parser.add_argument("--other", required=True, help="base URL of a host the secret may not go to")
    args = parser.parse_args()
    name = f"python-{args.client}"
    print(f"client {name} pid {os.getpid()}", flush=True)
    key = os.environ["API_KEY"]
    failed = False
    for base in (args.allowed, args.other):
        url = f"{base}/{name}"
        # Built at run time so it is this request's own object, not a shared constant.
        body = f"token={key}"
        if args.client in HANDS_BYTES:
            body = body.encode()
        try:
            print(name, url, SENDERS[args.client](url, key, body), flush=True)
        except Exception as err:
            print(name, url, "error:", repr(err), flush=True)
            failed = True
        if args.client in HANDS_BYTES and key.encode() not in body:
            print(f"S5 VIOLATION {name}: the body bytes no longer hold the placeholder", flush=True)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
