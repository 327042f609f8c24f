// The esbuild options of the browser bundle, shared by the build and the test
// that checks dist/ is a fresh, reproducible build of src/.
export const bundleOptions = {
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome120", "firefox121", "safari17"],
  minify: true,
  legalComments: "none",
  charset: "utf8",
  // V8's explicit compile hint (Chrome 136+; a plain comment elsewhere): compile
  // every function with the module instead of lazily on its first call. A page
  // calls nearly all of them in its first refresh, cold; compiled lazily, each
  // first call cost main-thread time between a response and the next request
  // (the browser benchmark's refresh took ~8 ms longer).
  banner: { js: "//# allFunctionsCalledOnLoad" },
};
