//! The OpenAPI document's structure, checked without a network: every
//! reference resolves, every path parameter has a pattern, and every route
//! lists the answers the contract says it can give. `cargo xtask fuzz`
//! checks the document against the running service.

use adapter_http::ApiDoc;
use serde_json::{Value, json};
use utoipa::OpenApi as _;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
}

/// Every operation of `doc`: its method, its path and itself.
fn operations(doc: &Value) -> Vec<(&'static str, String, &Value)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut found = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method, path.clone(), operation));
            }
        }
    }
    found
}

/// The `$ref`s of `doc` that point nowhere in it, with where they are.
fn dangling_refs(doc: &Value) -> Vec<String> {
    fn walk(doc: &Value, value: &Value, at: &str, dangling: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields {
                    let here = format!("{at}/{key}");
                    if key == "$ref" {
                        let target = field.as_str().unwrap_or_default();
                        let resolves = target
                            .strip_prefix('#')
                            .is_some_and(|pointer| doc.pointer(pointer).is_some());
                        if !resolves {
                            dangling.push(format!("{here} -> {target}"));
                        }
                    } else {
                        walk(doc, field, &here, dangling);
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(doc, item, &format!("{at}/{index}"), dangling);
                }
            }
            _ => {}
        }
    }
    let mut dangling = Vec::new();
    walk(doc, doc, "#", &mut dangling);
    dangling
}

/// `schema` itself, or what it refers to.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(target) => doc
            .pointer(target.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{target} does not resolve")),
        None => schema,
    }
}

fn statuses(operation: &Value) -> Vec<&str> {
    operation["responses"]
        .as_object()
        .map(|responses| responses.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// `operation` lists every one of `expected`, or else a message naming it.
fn missing_statuses(
    method: &str,
    path: &str,
    operation: &Value,
    expected: &[&str],
) -> Option<String> {
    let listed = statuses(operation);
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|status| !listed.contains(status))
        .collect();
    (!missing.is_empty()).then(|| format!("{method} {path} lacks {missing:?}"))
}

/// The names of the schemas a response's JSON body may have: the one it
/// refers to, or each of a `oneOf`.
fn json_body_shapes<'a>(doc: &'a Value, response: &'a Value) -> Vec<&'a str> {
    let schema = &response["content"]["application/json"]["schema"];
    let schema = match schema["$ref"].as_str() {
        Some(_) => schema,
        None => return Vec::new(),
    };
    let name = |schema: &'a Value| {
        schema["$ref"]
            .as_str()
            .and_then(|target| target.rsplit('/').next())
            .unwrap_or_default()
    };
    match resolve(doc, schema)["oneOf"].as_array() {
        Some(shapes) => shapes.iter().map(name).collect(),
        None => vec![name(schema)],
    }
}

#[test]
fn every_reference_in_the_document_resolves() {
    let doc = document();
    let dangling = dangling_refs(&doc);
    assert!(
        dangling.is_empty(),
        "unresolvable references: {dangling:#?}"
    );
}

#[test]
fn the_reference_check_finds_a_schema_that_is_not_registered() {
    let mut doc = document();
    doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        json!({"$ref": "#/components/schemas/NotRegistered"});
    let dangling = dangling_refs(&doc);
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert!(dangling[0].ends_with("-> #/components/schemas/NotRegistered"));
}

#[test]
fn every_path_parameter_has_a_pattern() {
    let doc = document();
    let mut checked = 0;
    for (method, path, operation) in operations(&doc) {
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for name in path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        {
            let parameter = parameters
                .iter()
                .find(|parameter| parameter["name"] == name && parameter["in"] == "path")
                .unwrap_or_else(|| panic!("{method} {path} does not describe {{{name}}}"));
            assert_eq!(parameter["required"], true, "{method} {path} {name}");
            let schema = resolve(&doc, &parameter["schema"]);
            assert!(
                schema["pattern"]
                    .as_str()
                    .is_some_and(|p| p.starts_with('^') && p.ends_with('$')),
                "{method} {path}: {{{name}}} has no anchored pattern: {schema}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} path parameters found");
}

#[test]
fn the_pipeline_id_pattern_is_the_one_the_domain_parses() {
    let doc = document();
    let operation = &doc["paths"]["/platform/pipeline/{pipeline_id}"]["get"];
    let pattern = operation["parameters"][0]["schema"]["pattern"]
        .as_str()
        .unwrap();
    assert_eq!(
        pattern,
        "^[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}$"
    );
    let body = resolve(
        &doc,
        &doc["paths"]["/platform/pipeline/execute"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"],
    );
    assert_eq!(body["properties"]["pipeline_id"]["pattern"], pattern);
    assert_eq!(body["required"], json!(["pipeline_id"]));
}

#[test]
fn every_platform_route_is_secured_and_lists_the_failures_every_route_can_give() {
    let doc = document();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    );
    let mut problems = Vec::new();
    let mut platform = 0;
    for (method, path, operation) in operations(&doc) {
        if !path.starts_with("/platform/") {
            assert!(
                operation.get("security").is_none(),
                "{method} {path} needs no token"
            );
            continue;
        }
        platform += 1;
        assert_eq!(
            operation["security"],
            json!([{"bearer": []}]),
            "{method} {path}"
        );
        problems.extend(missing_statuses(
            method,
            &path,
            operation,
            &["401", "429", "502", "503", "504"],
        ));
        if !statuses(operation)
            .iter()
            .any(|status| status.starts_with('2'))
        {
            problems.push(format!("{method} {path}: no answer of success"));
        }
        let responses = &operation["responses"];
        let unauthorized = &responses["401"];
        if unauthorized["headers"].get("WWW-Authenticate").is_none() {
            problems.push(format!("{method} {path}: 401 without WWW-Authenticate"));
        }
        if json_body_shapes(&doc, unauthorized) != ["ErrorEnvelope", "PlainDetail"] {
            problems.push(format!(
                "{method} {path}: 401 is not the envelope or `Not authenticated`"
            ));
        }
        if responses["429"]["headers"].get("Retry-After").is_none() {
            problems.push(format!("{method} {path}: 429 without Retry-After"));
        }
        if path.contains('{') {
            problems.extend(missing_statuses(method, &path, operation, &["400", "404"]));
        }
    }
    assert!(platform >= 11, "only {platform} /platform routes");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_route_that_reads_a_body_lists_its_failures_and_its_shapes_of_400() {
    let doc = document();
    let mut problems = Vec::new();
    let mut with_body = 0;
    for (method, path, operation) in operations(&doc) {
        if operation.get("requestBody").is_none() {
            continue;
        }
        with_body += 1;
        problems.extend(missing_statuses(
            method,
            &path,
            operation,
            &["400", "408", "413", "415"],
        ));
        // A body with a `pipeline_id` may also be answered the bare
        // `pipeline_id is required`; any other body only with the envelope.
        let body = operation["requestBody"].to_string();
        let expected: &[&str] =
            if body.contains("PipelineIdRequest") || body.contains("ExecuteRequest") {
                &["ErrorEnvelope", "PlainDetail"]
            } else {
                &["ErrorEnvelope"]
            };
        let shapes = json_body_shapes(&doc, &operation["responses"]["400"]);
        if shapes != expected {
            problems.push(format!(
                "{method} {path}: 400 is {shapes:?}, not {expected:?}"
            ));
        }
    }
    assert!(with_body >= 3, "only {with_body} routes read a body");
    assert!(problems.is_empty(), "{problems:#?}");
    let texts = &doc["components"]["schemas"]["PlainDetail"]["properties"]["detail"]["enum"];
    for text in [
        "pipeline_id is required",
        "Not authenticated",
        "Not Found",
        "Method Not Allowed",
    ] {
        assert!(
            texts.as_array().unwrap().contains(&json!(text)),
            "{text} in {texts}"
        );
    }
}

#[test]
fn the_state_errors_are_described_where_they_are_answered() {
    let doc = document();
    for (path, state_error) in [
        ("/platform/pipeline/execute", "PipelinePaused"),
        ("/platform/pipeline/pause", "PipelineAlreadyPaused"),
        ("/platform/pipeline/unpause", "PipelineNotPaused"),
    ] {
        let description = doc["paths"][path]["post"]["responses"]["400"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains(&format!("`{state_error}`")),
            "{path}: 400 does not name {state_error}: {description}"
        );
    }
}

#[test]
fn execute_documents_its_idempotency_answers_and_headers() {
    let doc = document();
    let execute = &doc["paths"]["/platform/pipeline/execute"]["post"];
    if let Some(problem) = missing_statuses("post", "execute", execute, &["404", "409", "422"]) {
        panic!("{problem}");
    }
    let key = &execute["parameters"][0];
    assert_eq!(key["name"], "Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], false);
    assert_eq!(key["schema"]["type"], "string", "a header is never null");
    assert!(key["schema"]["pattern"].is_string());
    let responses = &execute["responses"];
    assert!(responses["200"]["headers"]["Idempotent-Replayed"].is_object());
    assert!(responses["409"]["headers"]["Retry-After"].is_object());
    for status in ["429", "503"] {
        // The route's own description replaces the shared one.
        let description = responses[status]["description"].as_str().unwrap();
        let own = if status == "429" {
            "PipelineQueueFull"
        } else {
            "IdempotencyStoreUnavailable"
        };
        assert!(description.contains(own), "{status}: {description}");
    }
}

#[test]
fn the_run_listing_documents_its_query_and_total() {
    let doc = document();
    let list = &doc["paths"]["/platform/pipeline/{pipeline_id}/pipeline_run"]["get"];
    let parameter = |name: &str| {
        list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let limit = parameter("limit");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], domain::RunQuery::MAX_LIMIT);
    let offset = parameter("offset");
    assert_eq!(offset["schema"]["minimum"], 0);
    assert_eq!(offset["schema"]["maximum"], domain::RunQuery::MAX_OFFSET);
    let status = parameter("status")["schema"]["pattern"]
        .as_str()
        .unwrap()
        .to_owned();
    for name in ["QUEUED", "RUNNING", "SUCCESS", "FAILED"] {
        let written: String = name
            .chars()
            .map(|c| format!("[{c}{}]", c.to_ascii_lowercase()))
            .collect();
        assert!(status.contains(&written), "{status} lacks {name}");
    }
    assert!(list["responses"]["200"]["headers"]["X-Total-Count"].is_object());
}

#[test]
fn every_answer_carries_x_request_id_and_says_what_its_body_is() {
    let doc = document();
    let mut problems = Vec::new();
    for (method, path, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let response = resolve(&doc, response);
            if response["headers"].get("X-Request-Id").is_none() {
                problems.push(format!("{method} {path} {status}: no X-Request-Id"));
            }
            let content = response["content"].as_object();
            let described = content
                .is_some_and(|content| content.values().all(|media| media.get("schema").is_some()));
            // A redirect has no body; everything else says what it sends.
            if status != "303" && !described {
                problems.push(format!("{method} {path} {status}: no body schema"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_operational_routes_are_documented_as_they_answer() {
    let doc = document();
    let paths = &doc["paths"];
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/",
    ] {
        assert!(paths[path]["get"].is_object(), "{path} is not documented");
    }
    assert!(paths["/ready"]["get"]["responses"]["503"].is_object());
    assert!(
        paths["/metrics"]["get"]["responses"]["200"]["content"]["application/openmetrics-text"]
            .is_object()
    );
    assert!(paths["/docs/"]["get"]["responses"]["200"]["content"]["text/html"].is_object());
    assert!(paths["/docs"]["get"]["responses"]["303"]["headers"]["Location"].is_object());
}
