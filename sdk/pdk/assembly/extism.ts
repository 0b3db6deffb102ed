/**
 * The Extism kernel ABI (`extism:host/env`): host memory blocks addressed by
 * i64 handles (not guest pointers), through which host-function arguments
 * and results travel. Declared functions that a plugin never calls are not
 * imported. A hook's input and output use the bext I/O functions (io.ts)
 * instead of Extism's input/output, which move 8 bytes per host call.
 */

// @ts-ignore: decorator
@external("extism:host/env", "input_length") export declare function input_length(): u64;
// @ts-ignore: decorator
@external("extism:host/env", "input_load_u8") export declare function input_load_u8(offset: u64): u8;
// @ts-ignore: decorator
@external("extism:host/env", "input_load_u64") export declare function input_load_u64(offset: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "output_set") export declare function output_set(handle: u64, length: u64): void;
// @ts-ignore: decorator
@external("extism:host/env", "error_set") export declare function error_set(handle: u64): void;
// @ts-ignore: decorator
@external("extism:host/env", "alloc") export declare function alloc(length: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "free") export declare function free(handle: u64): void;
// @ts-ignore: decorator
@external("extism:host/env", "length") export declare function length(handle: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "store_u8") export declare function store_u8(handle: u64, value: u8): void;
// @ts-ignore: decorator
@external("extism:host/env", "store_u64") export declare function store_u64(handle: u64, value: u64): void;
// @ts-ignore: decorator
@external("extism:host/env", "load_u8") export declare function load_u8(handle: u64): u8;
// @ts-ignore: decorator
@external("extism:host/env", "load_u64") export declare function load_u64(handle: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "config_get") export declare function config_get(key: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "var_get") export declare function var_get(key: u64): u64;
// @ts-ignore: decorator
@external("extism:host/env", "var_set") export declare function var_set(key: u64, value: u64): void;

/** Copies `len` bytes from guest memory at `ptr` into a new host block and returns its handle. */
export function storeRaw(ptr: usize, len: i32): u64 {
  const handle = alloc(<u64>len);
  let i = 0;
  for (; i + 8 <= len; i += 8) store_u64(handle + <u64>i, load<u64>(ptr + <usize>i));
  for (; i < len; i++) store_u8(handle + <u64>i, load<u8>(ptr + <usize>i));
  return handle;
}

/** Stores a string (UTF-8) in host memory and returns its handle. */
export function storeString(s: string): u64 {
  const buf = String.UTF8.encode(s);
  return storeRaw(changetype<usize>(buf), buf.byteLength);
}

/** Reads a host block (UTF-8) as a string. A zero handle reads as "". */
export function loadString(handle: u64): string {
  if (handle == 0) return "";
  const len = <i32>length(handle);
  const buf = new ArrayBuffer(len);
  const ptr = changetype<usize>(buf);
  let i = 0;
  for (; i + 8 <= len; i += 8) store<u64>(ptr + <usize>i, load_u64(handle + <u64>i));
  for (; i < len; i++) store<u8>(ptr + <usize>i, load_u8(handle + <u64>i));
  return String.UTF8.decode(buf);
}
