use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use spate::client::{Delivery, Producer, ProducerConfig};
use spate::protocol::Acks;

/// How often a quiet stdin lets lingering batches go out.
const LINGER_CHECK: std::time::Duration = std::time::Duration::from_millis(5);

use super::{connect, describe};

pub struct ProduceOptions<'a> {
    pub broker: &'a str,
    pub topic: &'a str,
    pub partition: Option<u32>,
    pub key_separator: Option<&'a str>,
    pub acks: Acks,
    pub print_offsets: bool,
}

/// One record per line of stdin; with a key separator, the text before it is the key.
pub fn run(options: ProduceOptions<'_>) -> Result<(), String> {
    if options.print_offsets && options.acks == Acks::None {
        return Err(
            "--print-offsets needs --acks 1 or all: with acks 0 the broker does not answer".into(),
        );
    }
    let connection = connect(options.broker)?;
    let config = ProducerConfig {
        acks: options.acks,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(connection, options.topic, config).map_err(describe)?;
    let mut printer = OffsetPrinter::default();
    // Lines arrive on a thread so that a batch whose linger time is up goes out even while
    // stdin is quiet (an interactive session), not only when the next line comes.
    let (lines, incoming) = std::sync::mpsc::sync_channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = match incoming.recv_timeout(LINGER_CHECK) {
            Ok(line) => line.map_err(|error| format!("reading stdin: {error}"))?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                printer.add(
                    producer.send_lingering().map_err(describe)?,
                    options.print_offsets,
                )?;
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (key, value) = match options
            .key_separator
            .and_then(|separator| line.split_once(separator))
        {
            Some((key, value)) => (Some(key.as_bytes()), value.as_bytes()),
            None => (None, line.as_bytes()),
        };
        let deliveries = producer
            .send(options.partition, key, value)
            .map_err(describe)?;
        printer.add(deliveries, options.print_offsets)?;
    }
    let deliveries = producer.flush().map_err(describe)?;
    printer.add(deliveries, options.print_offsets)?;
    Ok(())
}

/// Prints `PARTITION OFFSET` per record in input order, as soon as every earlier record is
/// acknowledged too.
#[derive(Default)]
struct OffsetPrinter {
    next: u64,
    waiting: BTreeMap<u64, Delivery>,
}

impl OffsetPrinter {
    fn add(&mut self, deliveries: Vec<Delivery>, print: bool) -> Result<(), String> {
        if !print {
            return Ok(());
        }
        for delivery in deliveries {
            self.waiting.insert(delivery.sequence, delivery);
        }
        let mut out = std::io::stdout().lock();
        while let Some(delivery) = self.waiting.remove(&self.next) {
            writeln!(out, "{} {}", delivery.partition, delivery.offset)
                .map_err(|error| error.to_string())?;
            self.next += 1;
        }
        out.flush().map_err(|error| error.to_string())
    }
}
