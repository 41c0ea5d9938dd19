"""The refusal tables of the HTTP contract, shared by the in-process handler tests
(tests/unit/test_handlers.py) and the real-server ones (tests/integration/test_http_contract.py)."""
JSON = {"Content-Type": "application/json"}

BAD_BUYS = [
    # (description, body bytes, headers, expected status, expected field)
    ("missing username", b'{"userId":"u1","price":1}', JSON, 400, "username"),
    ("missing userId", b'{"username":"a","price":1}', JSON, 400, "userId"),
    ("missing price", b'{"username":"a","userId":"u1"}', JSON, 400, "price"),
    ("null username", b'{"username":null,"userId":"u1","price":1}', JSON, 400, "username"),
    ("null userId", b'{"username":"a","userId":null,"price":1}', JSON, 400, "userId"),
    ("null price", b'{"username":"a","userId":"u1","price":null}', JSON, 400, "price"),
    ("extra field", b'{"username":"a","userId":"u1","price":1,"isAdmin":true}', JSON, 400, "isAdmin"),
    ("numeric userId", b'{"username":"a","userId":555,"price":1}', JSON, 400, "userId"),
    ("numeric username", b'{"username":7,"userId":"u1","price":1}', JSON, 400, "username"),
    ("price as string", b'{"username":"a","userId":"u1","price":"12"}', JSON, 400, "price"),
    ("price true", b'{"username":"a","userId":"u1","price":true}', JSON, 400, "price"),
    ("price list", b'{"username":"a","userId":"u1","price":[]}', JSON, 400, "price"),
    ("price object", b'{"username":"a","userId":"u1","price":{}}', JSON, 400, "price"),
    ("price NaN", b'{"username":"a","userId":"u1","price":NaN}', JSON, 400, "price"),
    ("price Infinity", b'{"username":"a","userId":"u1","price":Infinity}', JSON, 400, "price"),
    ("price -Infinity", b'{"username":"a","userId":"u1","price":-Infinity}', JSON, 400, "price"),
    ("negative price", b'{"username":"a","userId":"u1","price":-1}', JSON, 400, "price"),
    ("huge price", b'{"username":"a","userId":"u1","price":1e308}', JSON, 400, "price"),
    ("overflowing price", b'{"username":"a","userId":"u1","price":1e999}', JSON, 400, "price"),
    ("three decimals", b'{"username":"a","userId":"u1","price":1.005}', JSON, 400, "price"),
    ("empty username", b'{"username":"","userId":"u1","price":1}', JSON, 400, "username"),
    ("blank userId", b'{"username":"a","userId":"   ","price":1}', JSON, 400, "userId"),
    ("operator userId", b'{"username":"a","userId":{"$ne":null},"price":1}', JSON, 400, "userId"),
    ("dollar in userId", b'{"username":"a","userId":"$where","price":1}', JSON, 400, "userId"),
    ("dot in userId", b'{"username":"a","userId":"a.b","price":1}', JSON, 400, "userId"),
    ("long username", b'{"username":"' + b"x" * 5000 + b'","userId":"u1","price":1}', JSON, 400, "username"),
    ("long userId", b'{"username":"a","userId":"' + b"u" * 65 + b'","price":1}', JSON, 400, "userId"),
    ("control char", b'{"username":"a\\u0007","userId":"u1","price":1}', JSON, 400, "username"),
    ("array body", b'[{"username":"a","userId":"u1","price":1}]', JSON, 400, "body"),
    ("string body", b'"buy"', JSON, 400, "body"),
    ("empty body", b"", JSON, 400, "body"),
    ("whitespace body", b"   ", JSON, 400, "body"),
    ("truncated JSON", b'{"username":"a",', JSON, 400, "body"),
    ("invalid UTF-8", b'{"username":"\xff\xfe","userId":"u1","price":1}', JSON, 400, "body"),
    ("deeply nested", b"[" * 100000 + b"]" * 100000, JSON, 413, "body"),
    ("nested within limit", b'{"username":"a","userId":"u1","price":1,"x":' + b"[" * 50 + b"]" * 50 + b"}",
     JSON, 400, "body"),
    ("1 MB body", b'{"username":"' + b"a" * (1024 * 1024) + b'","userId":"u1","price":1}', JSON, 413, "body"),
    ("text/plain", b'{"username":"a","userId":"u1","price":1}', {"Content-Type": "text/plain"}, 415,
     "Content-Type"),
    ("form encoded", b"username=a&userId=u1&price=1", {"Content-Type": "application/x-www-form-urlencoded"},
     415, "Content-Type"),
    ("no content type", b'{"username":"a","userId":"u1","price":1}', {}, 415, "Content-Type"),
    ("bad idempotency key", b'{"username":"a","userId":"u1","price":1}',
     {**JSON, "Idempotency-Key": "x" * 300}, 400, "Idempotency-Key"),
]

BAD_HISTORY = [
    ("/api/purchases?userId[$ne]=x", "userId"),
    ("/api/purchases?userId=a&userId=b", "userId"),
    ("/api/purchases", "userId"),
    ("/api/purchases?userId=%24ne", "userId"),
    ("/api/user/a.b/purchases", "userId"),
    ("/api/user/a%2Fb/purchases", "userId"),
    ("/api/getAllUserBuys/" + "x" * 65, "userId"),
    ("/api/user/u1/purchases?limit=100000000000", "limit"),
    ("/api/user/u1/purchases?limit=501", "limit"),
    ("/api/user/u1/purchases?limit=-1", "limit"),
    ("/api/user/u1/purchases?limit=0", "limit"),
    ("/api/user/u1/purchases?limit=ten", "limit"),
    ("/api/user/u1/purchases?before=garbage", "before"),
]

# Issue 13: inputs that once reached a 500, an HTML answer, a hang or a dropped connection.
HUGE_INTEGER = b"9" * 5000  # over Python's 4300-digit int-string limit
BAD_BUYS += [
    ("5000-digit integer price", b'{"username":"a","userId":"u1","price":' + HUGE_INTEGER + b"}", JSON, 400, "price"),
    ("5000-digit integer userId", b'{"username":"a","userId":' + HUGE_INTEGER + b',"price":1}', JSON, 400, "userId"),
    ("5000-digit integer username", b'{"username":' + HUGE_INTEGER + b',"userId":"u1","price":1}', JSON, 400,
     "username"),
    ("5000-digit integer in an unknown field", b'{"username":"a","userId":"u1","price":1,"n":' + HUGE_INTEGER + b"}",
     JSON, 400, "n"),
    ("exponent beyond Decimal", b'{"username":"a","userId":"u1","price":1E+999999999999999999999}', JSON, 400,
     "price"),
    ("negative exponent beyond Decimal", b'{"username":"a","userId":"u1","price":1E-999999999999999999999}', JSON,
     400, "price"),
]

BAD_HISTORY += [
    ("/api/user/u1/purchases?limit=%C2%B2", "limit"),      # superscript two: isdigit() but not int()
    ("/api/user/u1/purchases?limit=%E2%91%A0", "limit"),   # circled one
    ("/api/user/u1/purchases?limit=%D9%A5", "limit"),      # Arabic-Indic five: int() reads 5
    ("/api/user/u1/purchases?limit=%EF%BC%95", "limit"),   # fullwidth five
    ("/api/user/u1/purchases?limit=%2B5", "limit"),
    ("/api/user/u1/purchases?limit=%205", "limit"),
    ("/api/user/u1/purchases?limit=5.0", "limit"),
    ("/api/getAllUserBuys/u1?limit=1e2", "limit"),
]

# Whitespace str.strip() removes but a header must not carry (or a URI must escape): the
# userId is valid once trimmed, and the paging links must use the trimmed one.
PADDINGS = ["%0B", "%0C", "%0D", "%1C", "%1F", "%E2%80%A8", "%E3%80%80", "%20", "%09"]
# (raw path template with {pad} and {uid}, canonical path of the next-page link)
PADDED_USER_PATHS = [
    ("/api/user/{pad}{uid}/purchases?limit=1", "/api/user/{uid}/purchases?limit=1&before="),
    ("/api/user/{uid}{pad}/purchases?limit=1", "/api/user/{uid}/purchases?limit=1&before="),
    ("/api/getAllUserBuys/{pad}{uid}?limit=1", "/api/getAllUserBuys/{uid}?limit=1&before="),
    ("/api/purchases?userId={pad}{uid}&limit=1", "/api/purchases?userId={uid}&limit=1&before="),
]
PADDED_USER_CASES = [(raw.replace("{pad}", pad), link) for raw, link in PADDED_USER_PATHS for pad in PADDINGS]

# Paths the functions' router refuses before the function runs: a JSON 404, not HTML.
UNROUTABLE = ["/api/user/%0A555/purchases", "/api/getAllUserBuys/5%0A55", "/api/buy%0A", "/nope", "/robots.txt"]
# Methods no route allows: a JSON 405 from the function; the gateway forwards them (CONNECT, which
# needs an authority, not a path, it refuses itself: UNKNOWN_METHODS_THE_GATEWAY_REFUSES).
UNKNOWN_METHODS = [(method, path) for method in ("TRACE", "CONNECT", "PROPFIND")
                   for path in ("/api/buy", "/api/user/u1/purchases", "/api/getAllUserBuys/u1")]
UNKNOWN_METHODS_THE_GATEWAY_REFUSES = {"CONNECT": 400}
# Raw requests the gateway itself must refuse with a JSON 400, promptly, keeping the socket
# long enough to answer: (description, request bytes).
BAD_FRAMING = [
    ("Content-Length abc", b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: abc\r\n\r\n{}"),
    ("Content-Length -1", b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: -1\r\n\r\n{}"),
    ("Content-Length +2", b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: +2\r\n\r\n{}"),
    ("conflicting Content-Lengths", b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ("Content-Length on GET", b"GET /api/user/u1/purchases HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
]

# Request paths and the backend the Ingress's pathType Prefix sends each to (whole path
# elements; the query is not part of the path): tests/k8s checks the Ingress objects route them
# so, tests/integration/test_gateway.py that the local gateway (Envoy) does.
ROUTED_PATHS = [
    ("/api/buy", "buy"), ("/api/buy/", "buy"), ("/api/buy/x", "buy"), ("/api/buy?x=1", "buy"), ("/api/buyer", None),
    ("/api/user/42/purchases", "history"), ("/api/user", "history"), ("/api/users/1", None),
    ("/api/purchases", "history"), ("/api/purchases?userId=555", "history"), ("/api/getAllUserBuys/u-1", "history"),
    ("/api/getAllUserBuysX", None), ("/api%2Fbuy", None), ("/", None), ("/nope", None),
]
