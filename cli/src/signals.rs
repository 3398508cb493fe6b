//! First SIGTERM or Ctrl-C drains; a second one exits at once.

/// Resolves on the first SIGTERM or SIGINT, and arranges for a second one to exit immediately.
pub async fn shutdown() {
    wait_one().await;
    tracing::warn!("shutdown requested: draining (send the signal again to exit at once)");
    tokio::spawn(async {
        wait_one().await;
        eprintln!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_one() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
