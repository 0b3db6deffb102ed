import { memo } from 'bext/ssr';
import type { Post } from '../data/posts.js';

/** One post in a list: pure, so its HTML is memoised per props in each render worker. */
export const PostItem = memo(function PostItem({ slug, title, date, summary }: Pick<Post, 'slug' | 'title' | 'date' | 'summary'>) {
  return (
    <li className="post">
      <a href={`/blog/${slug}`}>{title}</a> <time dateTime={date}>{date}</time>
      <p>{summary}</p>
    </li>
  );
});

export function PostList({ posts }: { posts: Post[] }) {
  if (posts.length === 0) return <p className="empty">No post matches.</p>;
  return (
    <ul className="posts">
      {posts.map((p) => (
        <PostItem key={p.slug} slug={p.slug} title={p.title} date={p.date} summary={p.summary} />
      ))}
    </ul>
  );
}
