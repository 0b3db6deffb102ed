// Build output under build/, which the repository ignores; this folder is its own workspace root.
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export default { distDir: 'build', poweredByHeader: false, outputFileTracingRoot: dirname(fileURLToPath(import.meta.url)) };
