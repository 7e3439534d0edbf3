from bascule.routing import Router, RouterEntry


def router(*specs):
    return Router([RouterEntry(order=i, **spec) for i, spec in enumerate(specs)])


def target(r, method, path, host=""):
    return r.match(method, path, host).target


def test_prefix_matches_at_segment_boundaries():
    r = router(dict(path="/api/users", target="users"))
    assert target(r, "GET", "/api/users") == "users"
    assert target(r, "GET", "/api/users/7") == "users"
    assert target(r, "GET", "/api/usersX") is None
    assert target(r, "GET", "/api") is None


def test_exact_matches_only_the_path():
    r = router(dict(path="/health", target="health", exact=True))
    assert target(r, "GET", "/health") == "health"
    assert target(r, "GET", "/health/") == "health"
    assert target(r, "GET", "/health/x") is None


def test_params_capture_one_segment():
    r = router(dict(path="/rides/{ride}/status", target="status", exact=True))
    m = r.match("GET", "/rides/r1/status")
    assert m.target == "status"
    assert m.params == {"ride": "r1"}
    assert target(r, "GET", "/rides/status") is None


def test_precedence_table():
    # Each rule of the documented precedence, one pair of routes each.
    r = router(
        dict(path="/", target="catch-all"),
        dict(path="/api", target="api"),
        dict(path="/api/users", target="users-prefix"),
        dict(path="/api/users", target="users-exact", exact=True),
        dict(path="/api/users/{id}", target="user-param", exact=True),
        dict(path="/api/users/me", target="user-me", exact=True),
        dict(path="/api/users/me", target="user-me-post", exact=True, methods=frozenset({"POST"})),
        dict(path="/api", target="api-on-host", hosts=("shop.example.com",)),
        dict(path="/api", target="api-on-wildcard", hosts=("*.rides.example.com",)),
    )
    assert target(r, "GET", "/other") == "catch-all"  # only the root prefix matches
    assert target(r, "GET", "/api/orders") == "api"  # deeper prefix beats shallower
    assert target(r, "GET", "/api/users") == "users-exact"  # exact beats prefix at equal depth
    assert target(r, "GET", "/api/users/7/x") == "users-prefix"  # params route is exact: prefix serves
    assert target(r, "GET", "/api/users/7") == "user-param"  # more segments beat fewer
    assert target(r, "GET", "/api/users/me") == "user-me"  # literal beats {param}
    assert target(r, "POST", "/api/users/me") == "user-me-post"  # a route with methods beats one without
    assert target(r, "GET", "/api/users", "shop.example.com") == "api-on-host"  # host-specific wins first
    assert target(r, "GET", "/api/x", "eu.rides.example.com") == "api-on-wildcard"
    assert target(r, "GET", "/api/x", "rides.example.com") == "api"  # "*." needs a subdomain


def test_declaration_order_breaks_ties():
    r = router(dict(path="/a", target="first"), dict(path="/a", target="second"))
    assert target(r, "GET", "/a") == "first"


def test_method_mismatch_reports_allowed_methods():
    r = router(dict(path="/orders", target="orders", methods=frozenset({"GET", "POST"})))
    m = r.match("DELETE", "/orders")
    assert m.target is None
    assert m.allowed == {"GET", "POST"}
    assert r.match("DELETE", "/nothing").allowed == frozenset()


def test_method_mismatch_falls_back_to_a_route_that_allows_it():
    r = router(
        dict(path="/api", target="api"),
        dict(path="/api/orders", target="orders-write", methods=frozenset({"POST"})),
    )
    assert target(r, "GET", "/api/orders") == "api"


def test_many_routes():
    r = router(*[dict(path=f"/svc{i}/items/{{id}}", target=i, exact=True) for i in range(10_000)])
    m = r.match("GET", "/svc9876/items/42")
    assert (m.target, m.params) == (9876, {"id": "42"})
