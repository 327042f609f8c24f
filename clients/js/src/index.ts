// @releasecontrol/host: verify a ReleaseControl origin (host protocol v2) before
// running any feature from it. Browser and Node; Node-only extras are in "./node".

export { FeatureHost, type FeatureHostOptions, type ChangeDetail, type RefusedDetail } from "./host.js";
export type { FailureKind } from "./beacons.js";
export { binOf } from "./bins.js";
export { BUCKETS, MAX_BUCKETING_KEY_BYTES, bucket, checkBucketingKey, newBucketingKey, onCanary } from "./bucketing.js";
export { memoryState, localStorageState, type StateStorage } from "./state.js";
export { RefusalError, type Refusal, type RefusalCode } from "./errors.js";
export type { TrustFile } from "./trust.js";
export { DEFAULT_LIMITS, type Limits } from "./limits.js";
export type { AssetCache, LoadedAsset, LoadedFeature, RefreshReport } from "./model.js";
export type { ImportMap } from "./importmap.js";
export type { FetchLike } from "./fetch.js";
export { SCHEMA_VERSION } from "./signed.js";
