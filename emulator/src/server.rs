//! Serving: the accept loop ([`Emulator::serve`]), one HTTP/1.1 connection with upgrades, and
//! the hyper service ([`EmulatorService`]) that sends each request to the h2c mode or the routes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::base::stopped;
use crate::emulator::Emulator;
use crate::http::EmulatorBody;
use crate::{h2c, routes};

/// How long [`Emulator::serve`] waits for open connections to finish after the shutdown signal,
/// before it aborts them (a 4 GiB download would otherwise hold the stop for minutes).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Emulator {
    /// A hyper service answering as this emulator, for callers that run their own connections.
    /// WebSocket echo sessions it starts run until their client leaves.
    pub fn service(&self) -> EmulatorService {
        // A receiver whose sender is gone never reports a stop.
        let (_, stop) = watch::channel(false);
        EmulatorService {
            emulator: self.clone(),
            stop,
        }
    }

    /// Accept HTTP/1.1 connections (with upgrades) on `listener`, one task per connection, until
    /// `shutdown` completes. Then stop accepting, ask open connections to finish their current
    /// exchange, close WebSocket sessions with 1001 "going away", and return once they are done
    /// (or after a short grace period, aborting what is left).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = EmulatorService {
            emulator: self,
            stop: stop_rx.clone(),
        };
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        connections.spawn(serve_connection(stream, service.clone(), stop_rx.clone()));
                    }
                    Err(error) => {
                        // Usually a connection reset before accept, or too many open files: wait a
                        // moment rather than spin, and carry on.
                        tracing::warn!(%error, "emulator: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        // Nobody may be listening any more (every service clone could be gone): that is fine.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!("emulator: aborting connections still open after the grace period");
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Serve one TCP connection until it closes, or until the stop signal asks it to finish.
async fn serve_connection(
    stream: TcpStream,
    service: EmulatorService,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "emulator: connection ended with an error");
            }
            return;
        }
        () = stopped(&mut stop) => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        tracing::debug!(%error, "emulator: connection ended with an error during shutdown");
    }
}

/// The hyper service of an [`Emulator`]: every request goes through `routes::handle`, which never
/// fails (errors become 4xx responses).
#[derive(Clone)]
pub struct EmulatorService {
    emulator: Emulator,
    /// Raised when [`Emulator::serve`] stops, so that WebSocket sessions can close.
    stop: watch::Receiver<bool>,
}

impl hyper::service::Service<Request<Incoming>> for EmulatorService {
    type Response = Response<EmulatorBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let emulator = self.emulator.clone();
        let stop = self.stop.clone();
        if emulator.h2c_on() {
            if let Some(switch) = h2c::asked(request.headers(), request.version()) {
                let response = h2c::switch(&emulator, stop, request, switch);
                return Box::pin(async move { Ok(response) });
            }
        }
        Box::pin(async move { Ok(routes::handle(&emulator, stop, request).await) })
    }
}
