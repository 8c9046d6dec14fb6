//! A small axum service on curfew: JSON notes kept in shared state, a
//! regex search that a crafted text poisons, files read through
//! `curfew::fs`, and a graceful shutdown. `CurfewLayer` sits next to the
//! tower-http layers such a service already has (trace, compression,
//! request body limit).
//!
//! ```text
//! cargo run --release --example axum              # 127.0.0.1:3000 until Ctrl-C
//! cargo run --release --example axum -- --demo    # a free port, a scripted client, then stops
//! ```
//!
//! With the server running:
//!
//! ```text
//! curl localhost:3000/notes
//! curl localhost:3000/notes -H 'content-type: application/json' -d '{"text":"milk"}'
//! curl localhost:3000/search -H 'content-type: application/json' -d '{"text":"abab"}'
//! curl -i localhost:3000/search -H 'content-type: application/json' \
//!      -d "{\"text\":\"$(printf 'ab%.0s' $(seq 34))\"}"      # 503 after 100 ms
//! curl localhost:3000/files/readme.txt
//! ```
//!
//! The poisoned search keeps one thread spinning (the regex engine never
//! yields and never checks a budget); curfew answers the caller at the
//! budget, writes the thread off and starts a replacement, and after three
//! such timeouts the client is refused with `429` for 30 s, before its body
//! is read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use curfew::policy::ClientPolicy;
use curfew_http::CurfewLayer;
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

/// The budget of every poll of a request's handler.
const BUDGET: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct AppState {
    notes: Arc<Mutex<Vec<Note>>>,
    files: Arc<PathBuf>,
}

#[derive(Clone, Serialize)]
struct Note {
    id: usize,
    text: String,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Deserialize)]
struct Search {
    text: String,
}

#[derive(Serialize)]
struct Found {
    matched: bool,
}

async fn list_notes(State(state): State<AppState>) -> Json<Vec<Note>> {
    Json(state.notes.lock().unwrap().clone())
}

async fn add_note(
    State(state): State<AppState>,
    Json(new): Json<NewNote>,
) -> (StatusCode, Json<Note>) {
    let mut notes = state.notes.lock().unwrap();
    let note = Note {
        id: notes.len() + 1,
        text: new.text,
    };
    notes.push(note.clone());
    (StatusCode::CREATED, Json(note))
}

/// Searches the text with `(a|b|ab)*(?=c)` through fancy-regex with its
/// backtrack limit lifted: exponential in the number of `ab` pairs.
async fn search(Json(q): Json<Search>) -> Result<Json<Found>, (StatusCode, String)> {
    curfew_attacks::regex::handle(q.text.as_bytes())
        .map(|answer| {
            Json(Found {
                matched: answer.ends_with("true"),
            })
        })
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// Serves a file from the example's directory, through `curfew::fs`: on the
/// worker pool, in chunks, under the job budget, and at most 1 MiB.
async fn file(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Vec<u8>, (StatusCode, String)> {
    if name.contains('/') || name.starts_with('.') {
        return Err((
            StatusCode::BAD_REQUEST,
            "a plain file name, please\n".into(),
        ));
    }
    curfew::fs::read_limited(state.files.join(&name), 1 << 20)
        .await
        .map_err(|e| {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                std::io::ErrorKind::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, format!("{e}\n"))
        })
}

fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/notes", get(list_notes).post(add_note))
        .route("/search", post(search))
        .route("/files/{name}", get(file))
        .with_state(state)
        // Innermost: every handler a curfew task under the budget.
        .layer(CurfewLayer::new().poll_budget(BUDGET))
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=debug".into()),
        )
        .init();
    let demo = std::env::args().any(|a| a == "--demo");

    let files = std::env::temp_dir().join(format!("curfew-axum-example-{}", std::process::id()));
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("readme.txt"), "served through curfew::fs\n")?;
    let state = AppState {
        notes: Arc::default(),
        files: Arc::new(files.clone()),
    };

    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(BUDGET)
        .client_policy(ClientPolicy::new(3, Duration::from_secs(30)))
        .build()?;
    let served = rt.block_on(async move {
        let addr = if demo {
            "127.0.0.1:0"
        } else {
            "127.0.0.1:3000"
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        if demo {
            std::thread::spawn(move || {
                if let Err(e) = run_demo(addr) {
                    eprintln!("demo client failed: {e}");
                }
                let _ = stop_tx.send(());
            });
        } else {
            println!("serving on http://{addr}; Ctrl-C stops");
            drop(stop_tx);
        }
        curfew_http::serve(listener, app(state))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    Ok(()) = stop_rx => {}
                }
            })
            .await
    });
    let _ = std::fs::remove_dir_all(&files);
    served?;
    println!("shut down gracefully");
    // A poisoned search may still be spinning on a written-off thread: the
    // process exit ends it.
    std::process::exit(0)
}

/// A scripted client: a few benign requests, a poisoned search answered
/// within the budget, benign requests that still answer, and the cool-off.
fn run_demo(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let send = |method: &'static str, path: &'static str, json: Option<String>| {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"));
            if json.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Full::from(json.unwrap_or_default()));
            let client = client.clone();
            async move {
                let t = Instant::now();
                let resp = client.request(req?).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                println!(
                    "{method:<4} {path:<20} {status} in {:>7.1?}  {}",
                    t.elapsed(),
                    String::from_utf8_lossy(&body).trim()
                );
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
            }
        };
        send("GET", "/health", None).await?;
        send("POST", "/notes", Some(r#"{"text":"milk"}"#.into())).await?;
        send("GET", "/notes", None).await?;
        send("GET", "/files/readme.txt", None).await?;
        send("POST", "/search", Some(r#"{"text":"abab"}"#.into())).await?;
        let poison = format!(r#"{{"text":"{}"}}"#, "ab".repeat(34));
        for _ in 0..3 {
            send("POST", "/search", Some(poison.clone())).await?;
            send("GET", "/health", None).await?;
        }
        // Three strikes: refused before the body is read.
        send("POST", "/search", Some(poison)).await?;
        Ok(())
    })
}
