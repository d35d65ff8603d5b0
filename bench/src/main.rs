//! `tidings-bench`: the load generator (`client`) and the runner (`suite`) of the tidings
//! benchmarks. See `BENCHMARKS.md` at the repository root.

mod client;
mod suite;
mod wire;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client::main(&args[2..]),
        Some("suite") => suite::main(&args[2..]),
        _ => {
            eprintln!(
                "usage: tidings-bench client --kind signalr|sio|raw --addr IP:PORT [--path P] \
                 [--proto json|msgpack] [--server-pid PID] [NAME=]PHASE…\n       \
                 tidings-bench suite --root DIR --out DIR [--reps N] [--quick] [--only a,b]"
            );
            std::process::exit(2);
        }
    }
}
