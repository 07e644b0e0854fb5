//! Real servers for the benches: a program found in the usual folders, started as a child
//! that is killed and reaped when dropped, and nginx serving a folder on loopback from a
//! temporary configuration.
#![allow(dead_code)] // each bench uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free 127.0.0.1 port (bound, then released for the server to take).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `name` in /usr/sbin, /usr/local/sbin, /usr/bin or /usr/local/bin.
pub fn find_program(name: &str) -> Result<PathBuf, String> {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{name} is not installed (apt-get install -y {name})"))
}

/// A server process that is stopped and reaped when dropped, whatever happened: SIGTERM
/// first (nginx's master then stops its workers; a SIGKILLed master leaves them running),
/// SIGKILL if it has not exited within 2 s.
pub struct Server {
    name: String,
    child: Child,
}

impl Server {
    /// Starts `command` (stdin and stdout closed, stderr inherited).
    pub fn start(name: &str, command: &mut Command) -> Result<Server, String> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("could not start {name}: {e}"))?;
        Ok(Server {
            name: name.to_owned(),
            child,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited early ({status})", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Waits until something accepts connections on `port` (bounded: 5 s).
    pub fn wait_listening(&mut self, port: u16) -> Result<(), String> {
        for _ in 0..100 {
            self.check_alive()?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{} is not listening on 127.0.0.1:{port} after 5 s", self.name))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..40 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx serving `www` as static files on 127.0.0.1 (`sendfile`, keep-alive, no access
/// log), its configuration, pid and temporary files in `dir`.
pub struct Nginx {
    /// The port it listens on.
    pub port: u16,
    server: Server,
}

impl Nginx {
    /// Starts nginx (from /usr/sbin or the other usual folders) with `workers` worker
    /// processes and waits until it listens.
    pub fn start(dir: &Path, www: &Path, workers: usize) -> Result<Nginx, String> {
        let nginx = find_program("nginx")?;
        let port = free_port()?;
        let config = dir.join(format!("nginx-{port}.conf"));
        std::fs::write(&config, static_config(dir, www, port, workers)).map_err(|e| e.to_string())?;
        let mut server = Server::start("nginx", Command::new(&nginx).arg("-c").arg(&config))?;
        server.wait_listening(port)?;
        Ok(Nginx { port, server })
    }

    /// The server's process.
    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// An nginx configuration for a server on 127.0.0.1:`port` with its pid, logs and
/// temporary files in `dir`: the shared frame, with `http` (directives inside `http {}`)
/// and `server` (inside `server {}`) filled in by each bench.
pub fn nginx_config(dir: &Path, port: u16, workers: usize, http: &str, server: &str) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx-{port}.pid;
error_log {d}/nginx-{port}.error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-{port}-body;
    proxy_temp_path {d}/tmp-{port}-proxy;
    fastcgi_temp_path {d}/tmp-{port}-fastcgi;
    uwsgi_temp_path {d}/tmp-{port}-uwsgi;
    scgi_temp_path {d}/tmp-{port}-scgi;
    default_type application/pdf;
    {http}
    server {{
        {server}
    }}
}}
"#
    )
}

fn static_config(dir: &Path, www: &Path, port: u16, workers: usize) -> String {
    nginx_config(
        dir,
        port,
        workers,
        "sendfile on;\n    tcp_nopush on;\n    keepalive_requests 1000000;\n    keepalive_timeout 60s;",
        &format!("listen 127.0.0.1:{port} backlog=1024;\n        root {};", www.display()),
    )
}
