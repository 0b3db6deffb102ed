import { notFound, type PageContext, type PageProps } from 'bext/ssr';
import { getPost } from '../../data/posts.js';

/** Each post is regenerated at most every 5 minutes; purge one with the cache tag `post:<slug>`. */
export const revalidate = 300;

export async function load({ params, tag }: PageContext) {
  const post = await getPost(params.slug!);
  if (!post) notFound();
  tag(`post:${post.slug}`);
  return post;
}

export default function PostPage({ data: post }: PageProps<typeof load>) {
  const og = `/api/og?template=post&title=${encodeURIComponent(post.title)}&subtitle=${encodeURIComponent(post.summary)}`;
  return (
    <article>
      <title>{`${post.title} · bext example`}</title>
      <meta property="og:title" content={post.title} />
      <meta property="og:image" content={og} />
      <h1>{post.title}</h1>
      <p><time dateTime={post.date}>{post.date}</time> · {post.tags.map((t) => `#${t}`).join(' ')}</p>
      <img src="/api/image?src=/img/hero.jpg&w=640" width={640} height={320} alt="" />
      {post.body.map((para, i) => (
        <p key={i}>{para}</p>
      ))}
      <p><a href="/blog">← All posts</a></p>
    </article>
  );
}
