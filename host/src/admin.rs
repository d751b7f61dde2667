//! The admin listener: `/metrics` in the Prometheus text format. It binds to localhost
//! unless configured otherwise, and never serves proxy traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{self, ProxyBody};
use crate::error::json_response;
use crate::telemetry::Telemetry;

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let telemetry = telemetry.clone();
                async move { Ok::<_, Infallible>(route(&telemetry, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(telemetry: &Telemetry, req: &Request<Incoming>) -> Response<ProxyBody> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => {
            let mut resp = Response::new(body::full(Bytes::from(telemetry.render())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (_, path) => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": format!("no admin endpoint {path}")}),
        ),
    }
}
