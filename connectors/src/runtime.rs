//! The one tokio runtime builder of the project.

/// A tokio runtime for a process's I/O (Kafka acknowledgements, ClickHouse and HTTP requests): two
/// worker threads, named, with time and I/O drivers. The dataflow's own threads are timely's.
pub fn io_runtime(thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(thread_name).enable_all().build()
}
