// GATI's distributed topology (README, "Distributed serving"):
//
//   client --predict--> Aggregator --run (acked)--> Executor --lookup--> Predictor[cut]
//                          ^                          |  <--- verdict (the reply) ----+
//                          +--- finished (oneway) ----+   the answer, as soon as it is known
//                          +--- shadowed (oneway) ----+   a sampled request, run to the end
//   Aggregator --add_samples (oneway)--> Retrainer --deploy--> Predictors
//   Predictor[knn] <--search/add--> NeighborIndex
//   Executor --judge--> NeighborIndex (the online tier)  <--remember (oneway)-- Executor
//   Retrainer --deploy_tier--> NeighborIndex
//
// Every message carries a request id. The executor runs the cascade loop (gati/runtime/cascade.py):
// it sends a cut's features and runs on without waiting for the reply (it reads the verdict when it
// must, at most `lookahead` stages later), and tells the aggregator the answer the moment the loop
// decides it. `run` is acknowledged once queued: a oneway message to an executor that just died
// would vanish, and the client would learn of it only at its deadline.
// Generated Python lives in gati/rpc/gen (make idl); CI regenerates it and fails on a diff.

namespace py gati_idl

// ---- errors a client sees -------------------------------------------------------------------
// Mutable in Python: Thrift 0.17 makes exceptions immutable by default, and Python's contextlib
// (and `raise ... from`) must set __traceback__/__cause__ on exceptions passing through `with`.

// The request itself is wrong: shape, dtype, NaN, empty, oversized, undecodable image bytes.
exception InvalidRequest { 1: string message } (python.immutable = "false")
// The bounded request queue is full; retry later. Never grows without bound.
exception Overloaded { 1: string message } (python.immutable = "false")
// A service the request needs is down or draining (executor unreachable, SIGTERM received).
exception Unavailable { 1: string message } (python.immutable = "false")
// No answer arrived within the request's deadline.
exception DeadlineExceeded { 1: string message } (python.immutable = "false")

// ---- payloads -------------------------------------------------------------------------------

// A dense array: numpy bytes in C order. dtype is a numpy name ("uint8", "float32", "int64").
struct Tensor {
  1: list<i32> shape,
  2: string dtype,
  3: binary data,
}

// Exactly one of image (an image file's bytes: PNG, JPEG, BMP, GIF, WebP, TIFF, any size) or tensor
// (uint8 HWC pixels, C = 1 or 3, any size; or float32 CHW of the model's input shape, already
// normalised) is set. Batch size is 1: a batch is sent as that many requests.
struct Request {
  1: optional binary image,
  2: optional Tensor tensor,
  3: optional i32 deadline_ms,
}

struct Prediction {
  1: i32 label,
  2: string class_name,
  3: double confidence,
  4: i32 exit_cut,          // cut index that answered, -1 when the full model answered
  5: string exit_name,      // cut name, or "final"
  6: i32 stages_run,        // stages the answer needed (as the in-process engine counts them)
  7: double server_ms,      // time inside the aggregator, decode to answer
  8: i64 request_id,
  // Where server_ms went, for `gati bench`'s breakdown; unset where nobody measured it.
  9: optional double decode_ms,   // decoding and preprocessing the request
  10: optional double queue_ms,   // waiting for a worker: the aggregator's admission queue plus the executor's
  11: optional double compute_ms, // stages run for the answer (in process: the whole cascade, lookups included)
  12: optional double lookup_ms,  // waiting for cache verdicts on the answer's path (ExecutionResult.lookup_ms)
  13: optional double network_ms, // the rest of the backend's time: hops, serialisation, scheduling
  // Honest degradation: a planned cut whose verdict never came (its predictor down or late) makes
  // the full model answer from there (gati/runtime/cascade.py says why the certificate still holds).
  14: bool degraded = false,           // some planned cut's verdict was missing
  15: list<string> missing_cuts = [],  // those cuts, in cut order
}

struct ServiceStatus {
  1: string role,
  2: string name,
  3: string version,
  4: double uptime_s,
  5: map<string, i64> counters,
  6: map<string, double> gauges,
  7: string bundle_sha256,
  8: i32 pid,
}

// ---- messages between services --------------------------------------------------------------

struct RunRequest {
  1: i64 request_id,
  2: Tensor input,          // float32 1xCxHxW, preprocessed
  3: bool sampled,          // finish in the background even after a hit; return features
  4: double deadline_unix,  // wall clock (time.time()) after which nobody waits for the answer
}

// What the executor sends a cut's predictor: only what the cache needs (its reduced input).
struct Features {
  1: i64 request_id,
  2: i32 cut,
  3: Tensor features,
}

// A predictor's verdict on one cut's features (the reply to `lookup`).
struct LookupReply {
  1: i64 request_id,
  2: i32 cut,
  3: i32 label,
  4: double confidence,
  5: bool hit,
  6: i32 cache_version,
  7: string predictor,
  8: string error = "",     // non-empty: the cache could not judge (e.g. its index is down): no verdict, not a miss
}

struct Sample {
  1: i32 cut,
  2: Tensor features,       // the cache's reduced input at this cut
  3: i32 base_label,        // the full model's answer
  4: optional Tensor base_logits,  // float32 [num_classes]: the teacher for distillation
}

// The online neighbour tier's verdict on a request as it stood before the request was stored in it
// (gati/learning/neighbours.py): what a review scores the tier by. label -1: the tier was empty.
struct TierVerdict {
  1: i32 label,
  2: double confidence,
}

// The answer the executor's cascade loop decided (sent the moment it is decided).
struct ExecutionResult {
  1: i64 request_id,
  2: i32 label,
  3: double confidence,
  4: i32 exit_cut,          // the cut whose cache answered, -1 when the full model answered
  5: i32 stages_run,        // stages run when the answer was decided
  6: string error,          // non-empty when the executor failed on this request (no answer)
  7: bool cancelled,        // stopped (cancel or deadline) before an answer was decided
  // Where the executor's time went, up to the answer (Prediction's breakdown):
  8: optional double queue_ms,    // from `run` received to a worker taking the request
  9: optional double compute_ms,  // time in stages
  10: optional double lookup_ms,  // time blocked reading verdicts (lookups plus their hops)
  11: list<i32> missing_cuts = [], // planned cuts whose verdict never came: the full model answered from there
  12: bool by_tier = false,        // the online neighbour tier answered at exit_cut (not the cut's cache)
}

// A sampled request after its answer: run to the end by the full model, for live agreement and
// for the retrainer.
struct ShadowResult {
  1: i64 request_id,
  2: i32 base_label,        // the full model's answer
  3: list<Sample> samples,  // each planned cut's reduced features, with the full model's logits
  4: optional TierVerdict tier,  // the online tier's verdict (absent: the cluster has no tier)
}

struct CacheUpdate {
  1: i32 cut,
  2: i32 version,
  3: binary blob,           // a tar of Cache.save's output
  4: optional double threshold,  // the confidence it answers at (absent: the threshold serving now)
}

struct CacheInfo {
  1: i32 cut,
  2: string cut_name,
  3: string variant,
  4: i32 version,
  5: double threshold,
}

struct SearchResult {
  1: Tensor sims,           // float32 [N, k]
  2: Tensor labels,         // int64 [N, k]
}

struct Vectors {
  1: Tensor vectors,        // float32 [M, d]
  2: Tensor labels,         // int64 [M]
}

// The online tier's threshold, as the retrainer deploys it (version: only ever grows).
struct TierUpdate {
  1: i32 version,
  2: double threshold,      // infinity: the tier never answers
}

struct TierInfo {
  1: i32 version,
  2: double threshold,
  3: i32 cut,
  4: i64 size,              // vectors held
  5: i64 capacity,
}

struct RetrainResult {
  1: i32 cut,
  2: bool deployed,
  3: i32 version,           // the version now serving
  4: double candidate_agreement,
  5: double deployed_agreement,
  6: i32 train_samples,
  7: i32 holdout_samples,
  8: string message,
  9: double candidate_hit_rate,
  10: double deployed_hit_rate,
}

// ---- services -------------------------------------------------------------------------------

service Service {
  bool ping(),
  ServiceStatus status(),
}

service Aggregator extends Service {
  Prediction predict(1: Request request)
      throws (1: InvalidRequest invalid, 2: Overloaded overloaded, 3: Unavailable unavailable,
              4: DeadlineExceeded deadline),
  oneway void finished(1: ExecutionResult result),
  oneway void shadowed(1: ShadowResult result),
}

service Executor extends Service {
  // Returns once the request is queued; its outcome comes back as Aggregator.finished. Refused at
  // once when draining (Unavailable), when its bounded queue is full (Overloaded), or when the
  // input is not the model's (InvalidRequest): nothing is queued then.
  void run(1: RunRequest request)
      throws (1: Unavailable unavailable, 2: Overloaded overloaded, 3: InvalidRequest invalid),
  // From the aggregator: stop now (deadline passed, answer no longer wanted).
  oneway void cancel(1: i64 request_id),
}

service Predictor extends Service {
  // The cache's verdict on a cut's features.
  LookupReply lookup(1: Features features),
  list<CacheInfo> caches(),
  // Swap in a new version of a cut's cache atomically; requests in flight finish on the old one.
  void deploy(1: CacheUpdate update) throws (1: InvalidRequest invalid),
  // The cache file of the version serving a cut (a retrainer that lost its state adopts it).
  binary cache(1: i32 cut) throws (1: InvalidRequest invalid),
}

service NeighborIndex extends Service {
  void add(1: string key, 2: Tensor vectors, 3: Tensor labels) throws (1: InvalidRequest invalid),
  SearchResult search(1: string key, 2: Tensor queries, 3: i32 k) throws (1: InvalidRequest invalid),
  i64 size(1: string key),
  void reset(1: string key),
  Vectors export(1: string key) throws (1: InvalidRequest invalid),
  // The online neighbour tier (gati/rpc/tier.py): its verdict on a request's unit vector at the tier's
  // cut (features: float32 [1, d]), judged at the certified threshold; like a predictor's lookup.
  LookupReply judge(1: Features features),
  // Requests that ran to the end, remembered with the full model's answer (vectors float32 [M, d],
  // labels int64 [M]); a malformed message is dropped whole.
  oneway void remember(1: Tensor vectors, 2: Tensor labels),
  void deploy_tier(1: TierUpdate update) throws (1: InvalidRequest invalid),
  TierInfo tier() throws (1: InvalidRequest invalid),
}

service Retrainer extends Service {
  // One sampled request's samples; `tier`: the online tier's verdict on it (absent: no tier).
  oneway void add_samples(1: list<Sample> samples, 2: TierVerdict tier),
  // Refit the cut's cache on the samples received, validate on held-back ones, deploy if no worse.
  RetrainResult retrain(1: i32 cut) throws (1: InvalidRequest invalid),
  // Validate and deploy a cache built elsewhere (a tar of Cache.save's output).
  RetrainResult propose(1: i32 cut, 2: binary blob) throws (1: InvalidRequest invalid),
  // From the aggregator: its live lower bound on agreement is about to fall below the target; serve
  // no early exits until a review certifies thresholds again (`reason` is logged).
  oneway void fallback(1: string reason),
}
