"""A long-running Python workload for the k8s tier: it starts, and only later imports ssl (libssl is
dlopened then, long after exec), then calls the allowed host every second with its placeholder in the
Authorization header. Standard library only; prints one line per request."""
import os
import sys
import time

time.sleep(2)  # libssl is not mapped yet while the agent first sees this process
import http.client  # noqa: E402
import ssl  # noqa: E402

context = ssl._create_unverified_context()
while True:
    try:
        conn = http.client.HTTPSConnection("api.kloak.test", 443, context=context, timeout=5)
        conn.request("GET", "/", headers={"Authorization": "Bearer " + os.environ["API_KEY"],
                                          "X-Client": "python"})
        print(conn.getresponse().status, flush=True)
        conn.close()
    except OSError as err:
        print("error:", err, file=sys.stderr, flush=True)
    time.sleep(1)
