//! The HTTP endpoints: `/metrics` (Prometheus text format), `/health` (the process is
//! up) and `/ready` (the node serves requests; load balancers route on it).

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::node::NodeState;

/// Latency buckets in seconds, from 50 µs (a local read) to 10 s (a backup timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use (several nodes in one
/// test process share it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            error!("a metrics recorder was already installed; /metrics shows only sitegrid's own");
        }
        metrics_process::Collector::default().describe();
        // Shown from the start, so alerts on it need no "absent" case.
        metrics::counter!("sitegrid_listener_dropped_total").absolute(0);
        metrics::counter!("sitegrid_pipeline_requests_total").absolute(0);
        metrics::gauge!("sitegrid_pipeline_streams").set(0.0);
        handle
    })
}

#[derive(Clone)]
struct HttpState {
    node: NodeState,
    prometheus: &'static PrometheusHandle,
}

/// Serves the HTTP endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, node: NodeState, mut shutdown: watch::Receiver<bool>) {
    let state = HttpState {
        node,
        prometheus: prometheus(),
    };
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        error!(error = %error, "http server failed");
    }
    info!("http server stopped");
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    state.node.update_gauges();
    state.prometheus.render()
}

async fn ready(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.node.check_ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
