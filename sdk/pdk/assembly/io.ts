/**
 * A hook's input and output: copied in one host call each between the
 * host and guest memory.
 */

// @ts-ignore: decorator
@external("extism:host/user", "bext_input_length") declare function bext_input_length(): i32;
// @ts-ignore: decorator
@external("extism:host/user", "bext_input_read") declare function bext_input_read(ptr: usize): void;
// @ts-ignore: decorator
@external("extism:host/user", "bext_output") declare function bext_output(ptr: usize, len: i32): void;
// @ts-ignore: decorator
@external("extism:host/user", "bext_error") declare function bext_error(ptr: usize, len: i32): void;

/** The call's input: UTF-8 JSON bytes. */
export function inputBytes(): ArrayBuffer {
  const buf = new ArrayBuffer(bext_input_length());
  bext_input_read(changetype<usize>(buf));
  return buf;
}

/** The call's input as a string. */
export function inputString(): string {
  return String.UTF8.decode(inputBytes());
}

/** Sets the call's output from UTF-8 bytes in guest memory. */
export function outputRaw(ptr: usize, len: i32): void {
  bext_output(ptr, len);
}

/** Sets the call's output (JSON text; "" = no decision). */
export function outputString(s: string): void {
  const buf = String.UTF8.encode(s);
  bext_output(changetype<usize>(buf), buf.byteLength);
}

/** Ends the call with an error the host raises with this message. */
export function errorString(message: string): void {
  const buf = String.UTF8.encode(message);
  bext_error(changetype<usize>(buf), buf.byteLength);
}
