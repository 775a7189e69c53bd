//! The real binary verifying RS256 tokens against a JWKS endpoint: keys by
//! `kid`, an endpoint that is down at start coming up later, the refusal of
//! plain http, and whether the verifier has its keys.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::{
    helpers::{ACME, fixture, now},
    maestro::{self, Maestro},
};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../adapter-auth/tests/fixtures"
);

/// The key set of the test key, as `key-1`.
pub(crate) fn key_set() -> Value {
    let jwk = std::fs::read_to_string(format!("{FIXTURES}/rsa_public.jwk.json")).unwrap();
    let mut jwk: Value = serde_json::from_str(&jwk).unwrap();
    jwk["kid"] = json!("key-1");
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    json!({"keys": [jwk]})
}

fn rs256_token(kid: &str) -> String {
    rs256_token_with(kid, json!({}))
}

/// A token of the test key under `kid`, with `extra` claims.
fn rs256_token_with(kid: &str, extra: Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let mut claims = json!({"customer_id": ACME, "sub": "idp-user", "exp": now() + 600});
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// Makes `idp` answer `response` for the key set at `/jwks.json`.
pub(crate) async fn serve_key_set(idp: &MockServer, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path("/jwks.json"))
        .respond_with(response)
        .mount(idp)
        .await;
}

/// The binary over the test fixture, reading keys from `jwks_url`, with
/// the default refetch interval (30 s) unless `env` says otherwise.
pub(crate) fn start(jwks_url: &str, env: &[(&str, &str)]) -> Maestro {
    let fixture = fixture();
    let mut all = vec![
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_JWKS_URL", jwks_url),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_LOG_FORMAT", "json"),
    ];
    all.extend_from_slice(env);
    Maestro::start(&all)
}

async fn list_status(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/platform/pipelines"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_binary_accepts_rs256_tokens_whose_kid_is_in_the_key_set() {
    let idp = MockServer::start().await;
    serve_key_set(&idp, ResponseTemplate::new(200).set_body_json(key_set())).await;
    let maestro = start(
        &format!("{}/jwks.json", idp.uri()),
        &[("MAESTRO_JWT_JWKS_MIN_REFETCH_SECONDS", "1")],
    );
    let base = format!("http://{}", maestro.addr());

    assert_eq!(list_status(&base, &rs256_token("key-1")).await, 200);
    assert_eq!(list_status(&base, &rs256_token("made-up")).await, 401);
    maestro.wait_for(|line| {
        (line.contains("WARN") && line.contains("without MAESTRO_JWT_AUDIENCE")).then_some(())
    });
}

#[tokio::test]
async fn with_oidc_discovery_tokens_of_another_issuer_are_refused_though_no_issuer_is_set() {
    let idp = MockServer::start().await;
    let issuer = idp.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks.json"),
        })))
        .mount(&idp)
        .await;
    serve_key_set(&idp, ResponseTemplate::new(200).set_body_json(key_set())).await;
    let fixture = fixture();
    let maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_OIDC_ISSUER_URL", issuer.as_str()),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_LOG_FORMAT", "json"),
    ]);
    maestro.wait_for(|line| line.contains("JWKS keys loaded").then_some(()));
    let base = format!("http://{}", maestro.addr());

    let ours = rs256_token_with("key-1", json!({"iss": issuer}));
    assert_eq!(list_status(&base, &ours).await, 200);
    let foreign = rs256_token_with("key-1", json!({"iss": "https://evil.example"}));
    assert_eq!(list_status(&base, &foreign).await, 401);
    let none = rs256_token("key-1");
    assert_eq!(list_status(&base, &none).await, 401);
}

#[tokio::test]
async fn a_key_set_down_at_start_is_used_within_seconds_of_coming_up() {
    let idp = MockServer::start().await;
    serve_key_set(&idp, ResponseTemplate::new(503)).await;
    // The default refetch interval, 30 s: acceptance within seconds comes
    // from the refresher's backoff, not from a refused token's refetch.
    let maestro = start(
        &format!("{}/jwks.json", idp.uri()),
        &[("MAESTRO_JWT_AUDIENCE", "maestro")],
    );
    let base = format!("http://{}", maestro.addr());
    let token = rs256_token_with("key-1", json!({"aud": "maestro"}));

    assert_eq!(list_status(&base, &token).await, 401);
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200, "the service runs without its keys");

    idp.reset().await;
    serve_key_set(&idp, ResponseTemplate::new(200).set_body_json(key_set())).await;
    let up = Instant::now();
    // No fixed wait: the binary says when the keys are in (the wait is
    // bounded by the helper's patience), and then the token must pass.
    maestro.wait_for(|line| line.contains("JWKS keys loaded").then_some(()));
    assert_eq!(list_status(&base, &token).await, 200);
    let took = up.elapsed();
    eprintln!("a token was accepted {took:?} after the key set came up");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let log = maestro.stderr();
    assert!(log.contains("keys_unavailable"), "the reason is logged");
    assert!(
        !log.contains("without MAESTRO_JWT_AUDIENCE"),
        "no warning with an audience"
    );
}

#[test]
fn the_binary_refuses_a_plain_http_key_set_on_another_host() {
    for (setting, url) in [
        ("MAESTRO_JWT_JWKS_URL", "http://idp.example/jwks.json"),
        (
            "MAESTRO_JWT_OIDC_ISSUER_URL",
            "http://idp.example/realms/acme",
        ),
    ] {
        let output = maestro::command()
            .arg("serve")
            .env("MAESTRO_BIND", "127.0.0.1:0")
            .env(setting, url)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{setting} is refused")) && stderr.contains("must be https"),
            "{stderr}"
        );
    }
}

/// Whether the verifier of the service `maestro serve` would build with
/// these flags has its keys.
async fn auth_keys(flags: &[&str]) -> std::sync::Arc<dyn adapter_auth::KeyReadiness> {
    let mut args = vec!["maestro", "serve", "--bind", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let Some(app::Command::Serve(config)) = <app::Cli as clap::Parser>::try_parse_from(args)
        .unwrap()
        .command
    else {
        unreachable!()
    };
    app::build(&config).await.unwrap().auth_keys
}

#[tokio::test]
async fn the_verifier_has_its_keys_at_once_for_a_secret_and_not_before_a_key_set_is_fetched() {
    let with_secret = auth_keys(&["--jwt-hs256-secret", crate::helpers::SECRET]).await;
    assert!(with_secret.keys_loaded());

    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&idp)
        .await;
    let url = format!("{}/jwks.json", idp.uri());
    let with_jwks = auth_keys(&["--jwt-jwks-url", &url]).await;
    assert!(!with_jwks.keys_loaded());
}
