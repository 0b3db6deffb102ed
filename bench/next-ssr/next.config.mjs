// Build output under build/, which the repository ignores.
export default { distDir: 'build', poweredByHeader: false };
