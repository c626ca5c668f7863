// llama-logits: evaluate a list of token ids with llama.cpp in one llama_decode
// call, logits requested for every position, and dump them as raw f32.
//
// Our own small program against llama.cpp's public C API (llama.h); it is built
// and linked against the static llama.cpp libraries by
// benches/peers/build-llama-cpp.sh (binary: DEST/build/bin/llama-logits).
//
// Usage:
//   llama-logits MODEL.gguf (--ids 1,2,3 | --ids-file F) --out FILE
//                [--ctx N] [--ubatch N] [-t N] [--kv-f32] [--kv-info] [-v]
//
//   --ids LIST      token ids separated by commas and/or whitespace
//   --ids-file F    file with token ids separated by commas and/or whitespace
//   --out FILE      output: raw little-endian f32, n_tokens x n_vocab, row-major
//                   (row i = logits after consuming ids[0..=i])
//   --ctx N         context size (default: number of tokens; llama.cpp pads the
//                   KV cache to a multiple of 256 cells internally)
//   --ubatch N      physical batch size (default: number of tokens, i.e. one ubatch).
//                   Note: ggml's CPU flash attention uses a tiled f32 kernel when a
//                   ubatch has >= 64 queries and an f16 one-chunk kernel below that,
//                   so logits differ (slightly) between ubatch sizes across 64.
//   -t N            threads (default 4); used for both n_threads and n_threads_batch
//   --kv-f32        keep K and V in f32 (default: llama.cpp's f16 cache)
//   --kv-info       add n_ctx / KV-cache byte counts to the JSON line
//   -v              keep llama.cpp logging (default: silenced)
//
// Fixed settings: CPU only (n_gpu_layers = 0), flash attention ENABLED,
// F16 K/V cache unless --kv-f32 (llama.cpp default), one sequence (seq_id 0), positions 0..n-1,
// no BOS/EOS added (the ids are used exactly as given).
//
// stdout: one JSON line {"n_tokens":N,"n_vocab":V} (plus "n_ctx", "kv_seq_bytes",
// "state_bytes" with --kv-info). Errors go to stderr with a non-zero exit code:
//   1 usage / bad ids, 2 model load, 3 context creation, 4 decode, 5 output I/O.

#include "llama.h"

#include <cerrno>
#include <cinttypes>
#include <clocale>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static bool g_verbose = false;

static void log_cb(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    // without -v only llama.cpp's own error messages get through (to stderr), so
    // that a failure (e.g. a bad GGUF) is explained; everything else is dropped
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static void usage(const char * argv0) {
    fprintf(stderr,
            "usage: %s MODEL.gguf (--ids 1,2,3 | --ids-file F) --out FILE\n"
            "          [--ctx N] [--ubatch N] [-t N] [--kv-f32] [--kv-info] [-v]\n"
            "writes n_tokens x n_vocab little-endian f32 logits (row-major) to FILE and\n"
            "prints {\"n_tokens\":N,\"n_vocab\":V} on stdout\n",
            argv0);
}

[[noreturn]] static void die(int code, const char * fmt, const char * arg = "") {
    fprintf(stderr, "llama-logits: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(code);
}

// Parse ids separated by commas and/or whitespace. Returns false on a bad entry.
static bool parse_ids(const std::string & text, std::vector<int64_t> & out, std::string & bad) {
    std::string cur;
    auto flush = [&]() -> bool {
        if (cur.empty()) {
            return true;
        }
        errno = 0;
        char * end = nullptr;
        long long v = strtoll(cur.c_str(), &end, 10);
        if (errno != 0 || end == cur.c_str() || *end != '\0') {
            bad = cur;
            return false;
        }
        out.push_back((int64_t) v);
        cur.clear();
        return true;
    };
    for (char c : text) {
        if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            if (!flush()) {
                return false;
            }
        } else {
            cur.push_back(c);
        }
    }
    return flush();
}

static int parse_pos_int(const char * s, const char * what) {
    errno = 0;
    char * end = nullptr;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v <= 0 || v > INT32_MAX) {
        fprintf(stderr, "llama-logits: error: %s must be a positive integer, got '%s'\n", what, s);
        exit(1);
    }
    return (int) v;
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    std::string model_path;
    std::string ids_text;
    bool have_ids = false;
    std::string out_path;
    int n_ctx_arg = 0;
    int n_ubatch_arg = 0;
    int n_threads = 4;
    bool kv_info = false;
    bool kv_f32 = false;

    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto need = [&](const char * name) -> const char * {
            if (i + 1 >= argc) {
                fprintf(stderr, "llama-logits: error: %s needs a value\n", name);
                usage(argv[0]);
                exit(1);
            }
            return argv[++i];
        };
        if (a == "--ids") {
            if (have_ids) die(1, "give only one of --ids / --ids-file");
            ids_text = need("--ids");
            have_ids = true;
        } else if (a == "--ids-file") {
            if (have_ids) die(1, "give only one of --ids / --ids-file");
            const char * f = need("--ids-file");
            std::ifstream in(f, std::ios::binary);
            if (!in) die(1, "cannot read ids file '%s'", f);
            std::stringstream ss;
            ss << in.rdbuf();
            ids_text = ss.str();
            have_ids = true;
        } else if (a == "--out" || a == "-o") {
            out_path = need("--out");
        } else if (a == "--ctx" || a == "-c") {
            n_ctx_arg = parse_pos_int(need("--ctx"), "--ctx");
        } else if (a == "--ubatch" || a == "-ub") {
            n_ubatch_arg = parse_pos_int(need("--ubatch"), "--ubatch");
        } else if (a == "-t" || a == "--threads") {
            n_threads = parse_pos_int(need("-t"), "-t");
        } else if (a == "--kv-info") {
            kv_info = true;
        } else if (a == "--kv-f32") {
            kv_f32 = true;
        } else if (a == "-v" || a == "--verbose") {
            g_verbose = true;
        } else if (a == "-m" || a == "--model") {
            model_path = need("-m");
        } else if (a == "-h" || a == "--help") {
            usage(argv[0]);
            return 0;
        } else if (!a.empty() && a[0] == '-') {
            fprintf(stderr, "llama-logits: error: unknown option '%s'\n", a.c_str());
            usage(argv[0]);
            return 1;
        } else if (model_path.empty()) {
            model_path = a;
        } else {
            fprintf(stderr, "llama-logits: error: unexpected argument '%s'\n", a.c_str());
            usage(argv[0]);
            return 1;
        }
    }
    if (model_path.empty() || !have_ids || out_path.empty()) {
        usage(argv[0]);
        return 1;
    }

    std::vector<int64_t> ids64;
    std::string bad;
    if (!parse_ids(ids_text, ids64, bad)) die(1, "bad token id '%s'", bad.c_str());
    if (ids64.empty()) die(1, "no token ids given");
    if (ids64.size() > (size_t) INT32_MAX) die(1, "too many token ids");
    const int32_t n_tokens = (int32_t) ids64.size();
    if (n_ctx_arg != 0 && n_ctx_arg < n_tokens) {
        fprintf(stderr, "llama-logits: error: --ctx %d is smaller than the number of tokens %d\n",
                n_ctx_arg, n_tokens);
        return 1;
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (model == nullptr) die(2, "failed to load model '%s'", model_path.c_str());

    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (size_t i = 0; i < ids64.size(); i++) {
        if (ids64[i] < 0 || ids64[i] >= n_vocab) {
            fprintf(stderr,
                    "llama-logits: error: token id %" PRId64 " at position %zu is out of range [0, %d)\n",
                    ids64[i], i, n_vocab);
            llama_model_free(model);
            return 1;
        }
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = (uint32_t) (n_ctx_arg != 0 ? n_ctx_arg : n_tokens);
    cparams.n_batch         = (uint32_t) n_tokens;  // whole input in one llama_decode
    cparams.n_ubatch        = (uint32_t) (n_ubatch_arg != 0 ? n_ubatch_arg : n_tokens);
    cparams.n_seq_max       = 1;
    cparams.n_outputs_max   = (uint32_t) n_tokens;  // every position is an output
    cparams.n_threads       = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    if (kv_f32) {  // exact comparisons with f32 references: no f16 rounding of K and V
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
    }
    cparams.embeddings      = false;
    cparams.no_perf         = true;

    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        llama_model_free(model);
        die(3, "failed to create the llama context");
    }

    llama_batch batch = llama_batch_init(n_tokens, 0, 1);
    for (int32_t i = 0; i < n_tokens; i++) {
        batch.token[i]     = (llama_token) ids64[i];
        batch.pos[i]       = i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    batch.n_tokens = n_tokens;

    const int32_t rc = llama_decode(ctx, batch);
    if (rc != 0) {
        fprintf(stderr, "llama-logits: error: llama_decode failed with code %d\n", rc);
        llama_batch_free(batch);
        llama_free(ctx);
        llama_model_free(model);
        return 4;
    }

    FILE * fo = fopen(out_path.c_str(), "wb");
    if (fo == nullptr) {
        fprintf(stderr, "llama-logits: error: cannot open '%s' for writing: %s\n", out_path.c_str(),
                strerror(errno));
        return 5;
    }
    static_assert(sizeof(float) == 4, "f32 expected");
    const uint16_t probe = 1;
    const bool little = *(const uint8_t *) &probe == 1;
    std::vector<float> row_be;
    for (int32_t i = 0; i < n_tokens; i++) {
        const float * row = llama_get_logits_ith(ctx, i);
        if (row == nullptr) {
            fclose(fo);
            remove(out_path.c_str());
            fprintf(stderr, "llama-logits: error: no logits for position %d\n", i);
            return 4;
        }
        const float * src = row;
        if (!little) {  // keep the file little-endian on any host
            row_be.assign(row, row + n_vocab);
            for (auto & f : row_be) {
                uint32_t u;
                memcpy(&u, &f, 4);
                u = __builtin_bswap32(u);
                memcpy(&f, &u, 4);
            }
            src = row_be.data();
        }
        if (fwrite(src, sizeof(float), (size_t) n_vocab, fo) != (size_t) n_vocab) {
            fclose(fo);
            remove(out_path.c_str());
            fprintf(stderr, "llama-logits: error: short write to '%s'\n", out_path.c_str());
            return 5;
        }
    }
    if (fclose(fo) != 0) {
        remove(out_path.c_str());
        fprintf(stderr, "llama-logits: error: closing '%s' failed: %s\n", out_path.c_str(), strerror(errno));
        return 5;
    }

    if (kv_info) {
        // kv_seq_bytes: serialized state of sequence 0 (K and V of the n_tokens used
        // cells plus a small header); state_bytes: whole context state (includes the
        // logits/embedding output buffers and all memory). n_ctx: KV cells allocated.
        const size_t kv_seq_bytes = llama_state_seq_get_size(ctx, 0);
        const size_t state_bytes  = llama_state_get_size(ctx);
        printf("{\"n_tokens\":%d,\"n_vocab\":%d,\"n_ctx\":%u,\"kv_seq_bytes\":%zu,\"state_bytes\":%zu}\n",
               n_tokens, n_vocab, llama_n_ctx(ctx), kv_seq_bytes, state_bytes);
    } else {
        printf("{\"n_tokens\":%d,\"n_vocab\":%d}\n", n_tokens, n_vocab);
    }
    fflush(stdout);

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
