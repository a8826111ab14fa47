// Throwaway: CPU of transform::prepare per entry (not committed).
use async_trait::async_trait;
use fhir_bulk::import::transform::{SearchResolver, prepare};
struct NoServer;
#[async_trait]
impl SearchResolver for NoServer {
    async fn find_ids(&self, _: &str, _: &str) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
}
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let text = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let p = prepare(&text, &NoServer).await.unwrap();
        n = p.slots.len();
        let total: usize = p.slots.iter().flatten().map(|e| e.json.len()).sum();
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "prepare: {:.2} us/entry ({n} entries, best of 30)",
        best * 1e6 / n as f64
    );
}
