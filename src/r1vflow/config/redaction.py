"""One redaction for every text r1vflow shows (messages, logs, JSON), and the test of whether a
config value carries a credential (docs/reliability.md, "Secrets in text").

    redact("http://u:pw@h:5000/x?access_token=abc&a=1")  -> "http://***@h:5000/x?access_token=***&a=1"
    credential_in("s3://b/k?X-Amz-Signature=ab")          -> "query parameter 'X-Amz-Signature'"

What counts as a credential: the `user[:password]@` of a URI (`scheme://user:pw@host`,
`//user:pw@host`, or a bare `user:pw@host`), and the value of a query parameter whose name says it is one (CREDENTIAL_PARAMS,
compared case-insensitively).
"""

from __future__ import annotations

import re

MASK = "***"
CREDENTIAL_PARAMS = (
    "password", "passwd", "pwd", "pass", "secret", "client_secret", "token", "access_token",
    "refresh_token", "id_token", "auth", "authorization", "api_key", "apikey", "api-key", "key",
    "access_key", "secret_key", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "sas", "credential", "credentials")
_PARAMS = "|".join(re.escape(p) for p in sorted(CREDENTIAL_PARAMS, key=len, reverse=True))
# //userinfo@ (after a scheme or not; userinfo: no '/', whitespace, quote or '@')
_SCHEME_USERINFO = re.compile(r"(?P<lead>(?<!/)//)(?!/)(?P<info>[^/\s@'\"<>]+)@")
# bare user:password@host (no scheme): the ':' is what tells it from an e-mail address
_BARE_USERINFO = re.compile(
    r"(?P<lead>(?<![\w.:/@%+-]))(?P<info>[\w.%+-]+:[^\s@/'\"<>]+)@(?=[\w\[])")
_QUERY = re.compile(rf"(?P<lead>[?&;](?:{_PARAMS})=)(?P<info>[^&#\s'\"<>]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every credential (URI userinfo, credential query values) replaced by ***."""
    if "@" in text:
        text = _SCHEME_USERINFO.sub(lambda m: m["lead"] + MASK + "@", text)
        text = _BARE_USERINFO.sub(lambda m: m["lead"] + MASK + "@", text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m["lead"] + MASK, text)
    return text


def credential_in(text: str) -> str | None:
    """What credential `text` carries ("user:password@ in a URI", "query parameter 'x'"), or None.
    Only the `//user@` form counts here (not a bare user:pw@host): a config value is refused
    for it."""
    if "@" in text and _SCHEME_USERINFO.search(text):
        return "user:password@ in a URI"
    if "=" in text:
        match = _QUERY.search(text)
        if match:
            return f"query parameter {match['lead'][1:-1]!r}"
    return None
