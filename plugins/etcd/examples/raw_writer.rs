//! Raw etcd write baseline for `tools/bench.sh` (issue #14 item 5): writes `--keys` keys
//! `{prefix}{i}` (i = 1..=keys) with `--value-size`-byte values in transactions of
//! `--ops-per-txn` puts, `--in-flight` of them at once, straight through etcd-client — no
//! checkpoint, no encoding, no source. Prints the elapsed seconds (first transaction sent to the
//! last one answered) on stdout; a summary line goes to stderr.
//!
//! ```sh
//! cargo run --release -p etcdsync-etcd --example raw_writer -- \
//!     --endpoint http://127.0.0.1:2379 --keys 1000000 --prefix /bench/public/snap/ \
//!     --value-size 227 --ops-per-txn 128 --in-flight 4
//! ```

use etcd_client::{Client, Txn, TxnOp};
use std::process::ExitCode;
use std::time::Instant;
use tokio::task::JoinSet;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: raw_writer --endpoint URL --keys N --prefix PREFIX --value-size BYTES \
[--ops-per-txn 128] [--in-flight 4] [--first 1]";

/// What to write; every field from the command line.
#[derive(Debug)]
struct Args {
    endpoint: String,
    keys: u64,
    prefix: String,
    value_size: usize,
    ops_per_txn: u64,
    in_flight: usize,
    first: u64,
}

fn parse_number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, Error> {
    text.parse()
        .map_err(|_| format!("{flag}: not a number: {text:?}\n{USAGE}").into())
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, Error> {
    let mut endpoint = None;
    let mut keys = None;
    let mut prefix = None;
    let mut value_size = None;
    let mut ops_per_txn = 128u64;
    let mut in_flight = 4usize;
    let mut first = 1u64;
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--endpoint" => endpoint = Some(value),
            "--keys" => keys = Some(parse_number(&flag, &value)?),
            "--prefix" => prefix = Some(value),
            "--value-size" => value_size = Some(parse_number(&flag, &value)?),
            "--ops-per-txn" => ops_per_txn = parse_number(&flag, &value)?,
            "--in-flight" => in_flight = parse_number(&flag, &value)?,
            "--first" => first = parse_number(&flag, &value)?,
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}").into()),
        }
    }
    let missing = |name: &str| format!("{name} is required\n{USAGE}");
    let args = Args {
        endpoint: endpoint.ok_or_else(|| missing("--endpoint"))?,
        keys: keys.ok_or_else(|| missing("--keys"))?,
        prefix: prefix.ok_or_else(|| missing("--prefix"))?,
        value_size: value_size.ok_or_else(|| missing("--value-size"))?,
        ops_per_txn,
        in_flight,
        first,
    };
    if args.ops_per_txn == 0 || args.in_flight == 0 {
        return Err(format!("--ops-per-txn and --in-flight must be at least 1\n{USAGE}").into());
    }
    Ok(args)
}

/// Writes the keys; returns the elapsed time in seconds.
async fn write(args: &Args) -> Result<f64, Error> {
    let client = Client::connect([args.endpoint.as_str()], None).await?;
    let value = vec![b'v'; args.value_size];
    let end = args.first.saturating_add(args.keys);
    let mut tasks: JoinSet<Result<(), etcd_client::Error>> = JoinSet::new();
    let started = Instant::now();
    let mut next = args.first;
    while next < end {
        while tasks.len() >= args.in_flight {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
        let batch_end = next.saturating_add(args.ops_per_txn).min(end);
        let ops: Vec<TxnOp> = (next..batch_end)
            .map(|i| TxnOp::put(format!("{}{i}", args.prefix), value.clone(), None))
            .collect();
        next = batch_end;
        let mut kv = client.kv_client();
        tasks.spawn(async move { kv.txn(Txn::new().and_then(ops)).await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("raw_writer: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raw_writer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(write(&args)) {
        Ok(seconds) => {
            eprintln!(
                "raw_writer: {} keys of {} bytes to {} in {seconds:.3} s ({:.0} keys/s; {} puts/txn, {} in flight)",
                args.keys,
                args.value_size,
                args.endpoint,
                args.keys as f64 / seconds.max(1e-9),
                args.ops_per_txn,
                args.in_flight
            );
            println!("{seconds:.6}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raw_writer: {e}");
            ExitCode::FAILURE
        }
    }
}
