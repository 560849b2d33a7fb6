// Embedding lookup and its deterministic backward.
//
// Forward: out[t, :] = table[ids[t] - row_start, :] for ids inside the
// table (or shard) rows [row_start, row_start + rows); other tokens get
// zeros when `fill` is 1 and are left alone otherwise (so a table split by
// rows into shards is gathered by one launch per shard). Table f32, bf16 or
// f16 (as Pythia is published; read as packed pairs, no f16 feature needed).
//
// Backward, no float atomics: `embed_links` finds, for every token, the next
// token with the same id and whether an earlier one exists (tiled O(T^2)
// compare of ids, cheap next to the gradient traffic). Then `embed_bwd` runs
// one workgroup per (token, block of 256 columns); only the first token of
// each id works: it walks the chain of tokens with that id in token order,
// sums their gradient rows, and adds the sum into d_table. The order of
// every addition is fixed, so results are bit-identical run to run.

struct Params {
    tokens: u32,
    hidden: u32,
    row_start: u32,
    rows: u32,
    fill: u32,
    col_blocks: u32,   // ceil(hidden / 256), for embed_bwd
    _p0: u32,
    _p1: u32,
}

const NONE: u32 = 0x7fffffffu;
const HAS_PREV: u32 = 0x80000000u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
// f32 bits, or (TABLE_BF16 / TABLE_F16) 16-bit pairs as published.
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> links_out: array<u32>;
@group(0) @binding(6) var<storage, read> links: array<u32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dtable: array<f32>;

override TABLE_BF16: bool = false;
override TABLE_F16: bool = false;

//#include _common

fn table_at(e: u32) -> f32 {
    if TABLE_BF16 {
        return bf16_pick(table[e >> 1u], e);
    }
    if TABLE_F16 {
        return unpack2x16float(table[e >> 1u])[e & 1u];
    }
    return bitcast<f32>(table[e]);
}

// Table row of output element i, or -1 (as i32) when the id is elsewhere.
fn source_row(i: u32) -> i32 {
    let t = i / p.hidden;
    let id = ids[t];
    if id >= p.row_start && id - p.row_start < p.rows {
        return i32(id - p.row_start);
    }
    return -1;
}

@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i >= p.tokens * p.hidden {
        return;
    }
    let r = source_row(i);
    if r >= 0 {
        out[i] = table_at(u32(r) * p.hidden + i % p.hidden);
    } else if p.fill == 1u {
        out[i] = 0.0;
    }
}

var<workgroup> tile: array<u32, 256>;

// links[t] = (HAS_PREV if an earlier token has ids[t]) | (next such token or NONE).
@compute @workgroup_size(256)
fn embed_links(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = folded_group(wid, nwg) * 256u + lid;
    let live = t < p.tokens;
    var id = 0u;
    if live {
        id = ids[t];
    }
    var next = NONE;
    var prev = 0u;
    let ntiles = (p.tokens + 255u) / 256u;
    for (var k = 0u; k < ntiles; k++) {
        let j0 = k * 256u;
        if j0 + lid < p.tokens {
            tile[lid] = ids[j0 + lid];
        }
        workgroupBarrier();
        let m = min(256u, p.tokens - j0);
        for (var q = 0u; q < m; q++) {
            let j = j0 + q;
            if tile[q] == id && j != t {
                if j < t {
                    prev = HAS_PREV;
                } else if next == NONE {
                    next = j;
                }
            }
        }
        workgroupBarrier();
    }
    if live {
        links_out[t] = prev | next;
    }
}

// d_table[id - row_start, c] += sum over the tokens with that id, in order.
@compute @workgroup_size(256)
fn embed_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let g = folded_group(wid, nwg);
    let t = g / p.col_blocks;
    let c = (g % p.col_blocks) * 256u + lid;
    if t >= p.tokens || c >= p.hidden {
        return;
    }
    let l = links[t];
    let id = ids[t];
    if (l & HAS_PREV) != 0u || id < p.row_start || id - p.row_start >= p.rows {
        return;
    }
    var acc = dout[t * p.hidden + c];
    var j = l & NONE;
    loop {
        if j == NONE {
            break;
        }
        acc += dout[j * p.hidden + c];
        j = links[j] & NONE;
    }
    let k = (id - p.row_start) * p.hidden + c;
    dtable[k] = dtable[k] + acc;
}
