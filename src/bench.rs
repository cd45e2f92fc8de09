pub struct BenchOptions {
    pub brokers: Option<String>,
    pub events: usize,
    pub stores: usize,
    pub kafka_partitions: i32,
    pub latency_rate: u64,
}
pub async fn run(_o: &BenchOptions, _w: &mut dyn std::io::Write) -> crate::Result<()> {
    Ok(())
}
