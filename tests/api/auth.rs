//! Authentication: every way a credential can be missing or bad is a 401
//! in JSON, and says nothing about why.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{StatusCode, header::WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::helpers::{
    ACME, ACTIVE, Backend, SECRET, TestApp, envelope, json_of, now, on_each_backend, sign,
    sign_with,
};

const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/platform/pipeline/execute"),
    ("POST", "/platform/pipeline/pause"),
    ("POST", "/platform/pipeline/unpause"),
    ("GET", "/platform/pipelines"),
    (
        "GET",
        "/platform/pipeline/1b33ad2f_33d3_4837_9eeb_83c82c8b909d",
    ),
    (
        "GET",
        "/platform/pipeline/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/pipeline_run",
    ),
    (
        "GET",
        "/platform/pipeline/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/pipeline_run/manual__x",
    ),
];

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .json(&json!({"pipeline_id": ACTIVE}));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    request.send().await.unwrap()
}

on_each_backend!(
    every_platform_route_without_a_token_is_401_not_authenticated_with_a_bearer_challenge
);
async fn every_platform_route_without_a_token_is_401_not_authenticated_with_a_bearer_challenge(
    backend: Backend,
) {
    let app = TestApp::spawn_on(backend).await;
    for (method, path) in PROTECTED {
        let response = send(&app, method, path, None).await;
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer",
            "{method} {path}"
        );
        let (status, body) = json_of(response).await;
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(
            body,
            json!({"detail": "Not authenticated"}),
            "{method} {path}"
        );
    }
}

on_each_backend!(the_basic_scheme_and_an_empty_bearer_count_as_no_token);
async fn the_basic_scheme_and_an_empty_bearer_count_as_no_token(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for header in ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "Token abc"] {
        let (status, body) =
            json_of(send(&app, "GET", "/platform/pipelines", Some(header)).await).await;
        assert_eq!(status, 401, "{header}");
        assert_eq!(body, json!({"detail": "Not authenticated"}), "{header}");
    }
}

fn refused() -> Value {
    envelope("InvalidToken", "Could not validate credentials")
}

async fn assert_refused(app: &TestApp, token: &str, case: &str) {
    for (method, path) in PROTECTED {
        let response = send(app, method, path, Some(&format!("Bearer {token}"))).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{case}: {method} {path}"
        );
        assert!(
            response.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{case}"
        );
        let text = response.text().await.unwrap();
        assert!(!text.contains(token), "{case}: the answer echoes the token");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body, refused(), "{case}: {method} {path}");
    }
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

on_each_backend!(bad_tokens_are_refused_with_401_and_no_reason);
async fn bad_tokens_are_refused_with_401_and_no_reason(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let valid_claims = json!({"customer_id": ACME, "exp": now() + 3600});
    let valid = sign(&valid_claims);
    let wrong_key = sign_with(b"another-secret-that-is-long-enough-too", &valid_claims);
    let expired = sign(&json!({"customer_id": ACME, "exp": now() - 3600}));
    let not_yet_valid =
        sign(&json!({"customer_id": ACME, "exp": now() + 7200, "nbf": now() + 3600}));
    let without_exp = sign(&json!({"customer_id": ACME}));
    let alg_none = unsigned(&json!({"alg": "none", "typ": "JWT"}), &valid_claims);
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(json!({"customer_id": "globex", "exp": now() + 3600}).to_string());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let without_customer = sign(&json!({"sub": "someone", "exp": now() + 3600}));
    let empty_customer = sign(&json!({"customer_id": "", "exp": now() + 3600}));
    let numeric_customer = sign(&json!({"customer_id": 42, "exp": now() + 3600}));
    // A look-alike of a real customer: invisible characters are refused,
    // never taken for a new tenant.
    let zero_width = sign(&json!({"customer_id": "acme\u{200b}", "exp": now() + 3600}));
    let direction_override = sign(&json!({"customer_id": "\u{202e}acme", "exp": now() + 3600}));

    let cases = [
        ("garbage", "not-a-token"),
        ("three garbage segments", "a.b.c"),
        ("wrong key", wrong_key.as_str()),
        ("expired", expired.as_str()),
        ("not yet valid", not_yet_valid.as_str()),
        ("without exp", without_exp.as_str()),
        ("alg none", alg_none.as_str()),
        ("tampered payload", tampered.as_str()),
        ("without the customer claim", without_customer.as_str()),
        ("empty customer claim", empty_customer.as_str()),
        ("numeric customer claim", numeric_customer.as_str()),
        ("customer with a zero-width space", zero_width.as_str()),
        (
            "customer with a direction override",
            direction_override.as_str(),
        ),
    ];
    for (case, token) in cases {
        assert_refused(&app, token, case).await;
    }
    // The control: the same service accepts the untampered token.
    let response = send(
        &app,
        "GET",
        "/platform/pipelines",
        Some(&format!("Bearer {valid}")),
    )
    .await;
    assert_eq!(response.status(), 200);
}

on_each_backend!(the_secret_never_appears_in_any_answer);
async fn the_secret_never_appears_in_any_answer(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for path in ["/openapi.json", "/metrics", "/health", "/ready", "/nowhere"] {
        let text = app.text(path).await;
        assert!(!text.contains(SECRET), "{path}");
    }
}

on_each_backend!(issuer_and_audience_are_required_when_configured);
async fn issuer_and_audience_are_required_when_configured(backend: Backend) {
    let app = TestApp::spawn_on_with(
        backend,
        &[
            "--jwt-issuer",
            "https://id.example",
            "--jwt-audience",
            "maestro",
        ],
    )
    .await;
    let good = sign(
        &json!({"customer_id": ACME, "exp": now() + 3600, "iss": "https://id.example", "aud": "maestro"}),
    );
    let response = send(
        &app,
        "GET",
        "/platform/pipelines",
        Some(&format!("Bearer {good}")),
    )
    .await;
    assert_eq!(response.status(), 200);

    let wrong_issuer = sign(
        &json!({"customer_id": ACME, "exp": now() + 3600, "iss": "https://evil.example", "aud": "maestro"}),
    );
    let wrong_audience = sign(
        &json!({"customer_id": ACME, "exp": now() + 3600, "iss": "https://id.example", "aud": "other"}),
    );
    let no_audience =
        sign(&json!({"customer_id": ACME, "exp": now() + 3600, "iss": "https://id.example"}));
    for (case, token) in [
        ("wrong issuer", wrong_issuer),
        ("wrong audience", wrong_audience),
        ("no audience", no_audience),
    ] {
        assert_refused(&app, &token, case).await;
    }
}

on_each_backend!(the_customer_claim_name_is_configurable);
async fn the_customer_claim_name_is_configurable(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, &["--jwt-customer-claim", "tenant"]).await;
    let token = sign(&json!({"tenant": ACME, "exp": now() + 3600}));
    let response = send(
        &app,
        "GET",
        "/platform/pipelines",
        Some(&format!("Bearer {token}")),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 3);

    let default_claim = sign(&json!({"customer_id": ACME, "exp": now() + 3600}));
    assert_refused(
        &app,
        &default_claim,
        "default claim name when another is configured",
    )
    .await;
}
