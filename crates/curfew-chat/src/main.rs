//! `curfew-chat`: serves the chat until interrupted.

use clap::Parser;
use curfew_chat::{Options, Server};

fn main() -> std::process::ExitCode {
    // A search worker (see `curfew_chat::isolate`) runs its search and exits.
    curfew_chat::isolate::run_worker_if_asked();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let options = Options::parse();
    let addr = options.addr;
    let isolate_searches = !options.search_in_process;
    let mut config = match options.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("curfew-chat: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if isolate_searches && config.poll_budget.is_some() {
        match std::env::current_exe() {
            Ok(exe) => config.search_process = Some(exe),
            Err(e) => {
                eprintln!("curfew-chat: cannot find this executable for search workers: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let dev = config.dev;
    let budget = config.poll_budget;
    let server = match Server::start(config, addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("curfew-chat: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match budget {
        Some(b) => eprintln!(
            "curfew-chat: http://{} (handlers under a {b:?} poll budget)",
            server.local_addr()
        ),
        None => eprintln!(
            "curfew-chat: http://{} (--no-budgets: handlers inline on tokio)",
            server.local_addr()
        ),
    }
    if dev {
        eprintln!("curfew-chat: --dev: POST /dev/token signs a token for any user name");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = move || {
        let _ = tx.send(());
    };
    if let Err(e) = ctrlc_on_signal(stop) {
        eprintln!("curfew-chat: cannot watch for signals: {e}");
    }
    let _ = rx.recv();
    eprintln!("curfew-chat: shutting down");
    server.shutdown();
    std::process::ExitCode::SUCCESS
}

/// Calls `f` on SIGINT or SIGTERM, from a small tokio runtime of its own.
fn ctrlc_on_signal(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                f();
                Ok::<(), std::io::Error>(())
            })
        })?;
    Ok(())
}
