use super::*;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

fn post() -> axum::http::request::Builder {
    Request::post("/payments").header("content-type", "application/json")
}

#[tokio::test]
async fn creates_lists_and_counts() {
    let state = Arc::new(Payments::default());
    let app = app_with_state(state.clone());
    let body = r#"{"amount":100}"#;
    let (status, headers, first) = call(&app, post().body(Body::from(body)).unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["request"], json!({"amount": 100}));
    assert_eq!(first["sequence"], 1);
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(headers[header::LOCATION], format!("/payments/{id}"));

    let (_, _, second) = call(&app, post().body(Body::from(body)).unwrap()).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["sequence"], 2);

    let (status, _, list) =
        call(&app, Request::get("/payments").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([first, second]));

    let (_, _, one) = call(
        &app,
        Request::get(format!("/payments/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(one, first);

    let (_, _, stats) = call(
        &app,
        Request::get("/_demo/stats").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        stats,
        json!({"post_requests": 2, "payments": 2, "echo_requests": 0})
    );
}

#[tokio::test]
async fn invalid_json_and_forced_status_create_nothing() {
    let app = app();
    let (status, _, body) = call(&app, post().body(Body::from("{not json")).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"));

    let req = post()
        .header("x-demo-status", "503")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], 503);

    let req = post()
        .header("x-demo-status", "abc")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::BAD_REQUEST);

    let (_, _, stats) = call(
        &app,
        Request::get("/_demo/stats").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        stats,
        json!({"post_requests": 3, "payments": 0, "echo_requests": 0})
    );
}

#[tokio::test]
async fn bad_knobs_are_refused_before_any_work() {
    let state = Arc::new(Payments::default());
    let app = app_with_state(state.clone());
    for (name, value) in [
        ("x-demo-reset", "before-work"),
        ("x-demo-body-cut", "-1"),
        ("x-demo-body-cut", "ten"),
        ("x-demo-delay-ms", "soon"),
    ] {
        let req = post().header(name, value).body(Body::from("{}")).unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {value}");
        assert!(body["error"].as_str().unwrap().starts_with(name), "{body}");
    }
    let req = post()
        .header("x-demo-reset", "after-work")
        .header("x-demo-body-cut", "3")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(state.post_requests(), 5);
    assert!(state.list().is_empty());
}

#[tokio::test]
async fn reset_needs_the_connection_but_the_work_is_done() {
    let state = Arc::new(Payments::default());
    let app = app_with_state(state.clone());
    let req = post()
        .header("x-demo-reset", "after-work")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body["error"].as_str().unwrap().contains("serve"), "{body}");
    assert_eq!(state.list().len(), 1);
}

#[tokio::test]
async fn delay_header_delays_the_answer() {
    let app = app();
    let started = std::time::Instant::now();
    let req = post()
        .header("x-demo-delay-ms", "300")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(300));
}
